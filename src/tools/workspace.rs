//! Task workspaces: one folder per task under `sandbox.workspaces`, holding plain files (no folders, no
//! links, names checked like the sandbox's), and the `read_file`, `write_file` and `list_files` tools that
//! work in them and nowhere else. `run_code` copies a task's workspace into the jail's private tmpfs, so a
//! run sees the task's files and cannot change them.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Tool, ToolContext, ToolError, ToolSpec};
use crate::domain::TaskId;
use crate::sandbox::{check_file_name, WorkspaceFile};

/// Largest file the file tools read or write, in bytes.
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Most files a task's workspace holds.
pub const MAX_FILES: usize = 64;

/// Where task workspaces live.
#[derive(Debug, Clone)]
pub struct Workspaces {
    root: PathBuf,
}

impl Workspaces {
    /// Workspaces under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Workspaces { root: root.into() }
    }

    /// The folder of task `task_id`.
    pub fn dir(&self, task_id: TaskId) -> PathBuf {
        self.root.join(task_id.to_string())
    }

    fn path(&self, task_id: TaskId, name: &str) -> Result<PathBuf, ToolError> {
        check_file_name(name).map_err(|e| ToolError::InvalidInput(e.to_string()))?;
        Ok(self.dir(task_id).join(name))
    }

    /// Writes `content` to `name` in the task's workspace (whole file, atomically).
    pub async fn write(&self, task_id: TaskId, name: &str, content: &str) -> Result<(), ToolError> {
        let path = self.path(task_id, name)?;
        if content.len() > MAX_FILE_BYTES {
            return Err(ToolError::InvalidInput(format!(
                "'{name}' would hold {} bytes; at most {MAX_FILE_BYTES}",
                content.len()
            )));
        }
        let dir = self.dir(task_id);
        let (name, content) = (name.to_owned(), content.to_owned());
        blocking(move || write_file(&dir, &path, &name, &content)).await
    }

    /// Reads `name` from the task's workspace.
    pub async fn read(&self, task_id: TaskId, name: &str) -> Result<String, ToolError> {
        let path = self.path(task_id, name)?;
        let name = name.to_owned();
        blocking(move || read_file(&path, &name)).await
    }

    /// The names of the task's files, sorted (none when it has no workspace yet).
    pub async fn names(&self, task_id: TaskId) -> Result<Vec<String>, ToolError> {
        let dir = self.dir(task_id);
        blocking(move || list(&dir)).await
    }

    /// The root folder the task folders are in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every file of the task's workspace, for a sandbox run.
    pub async fn files(&self, task_id: TaskId) -> Result<Vec<WorkspaceFile>, ToolError> {
        let dir = self.dir(task_id);
        blocking(move || {
            list(&dir)?
                .into_iter()
                .map(|name| {
                    let content = read_file(&dir.join(&name), &name)?;
                    Ok(WorkspaceFile { name, content })
                })
                .collect()
        })
        .await
    }
}

/// Runs one whole file operation on the blocking pool: one hand-off per tool call, however many system
/// calls it makes (`tokio::fs` would hand off each one, and a hand-off costs more than a small file's
/// syscalls).
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| ToolError::Failed(format!("the file operation did not finish: {e}")))?
}

fn write_file(dir: &Path, path: &Path, name: &str, content: &str) -> Result<(), ToolError> {
    let fail = |what: &str, e: std::io::Error| ToolError::Failed(format!("{what} '{name}': {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail("create the workspace for", e))?;
    if !path.exists() && list(dir)?.len() >= MAX_FILES {
        return Err(ToolError::InvalidInput(format!(
            "the workspace already holds {MAX_FILES} files"
        )));
    }
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, content).map_err(|e| fail("write", e))?;
    std::fs::rename(&partial, path).map_err(|e| fail("write", e))
}

fn read_file(path: &Path, name: &str) -> Result<String, ToolError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|_| ToolError::Failed(format!("'{name}' is not in the task's workspace")))?;
    if !meta.is_file() {
        return Err(ToolError::Failed(format!("'{name}' is not a plain file")));
    }
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(ToolError::Failed(format!(
            "'{name}' holds {} bytes; the tool reads at most {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| ToolError::Failed(format!("read '{name}': {e}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn list(dir: &Path) -> Result<Vec<String>, ToolError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(ToolError::Failed(format!("list the workspace: {error}"))),
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let plain = entry.file_type().is_ok_and(|kind| kind.is_file());
        if let Some(name) = entry.file_name().to_str() {
            if plain && check_file_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn name_schema() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": crate::sandbox::MAX_NAME_CHARS })
}

/// `read_file`: a file of the task's workspace.
pub struct ReadFile(pub Workspaces);

#[async_trait]
impl Tool for ReadFile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "read_file",
            description: "Read a file of the task's workspace.",
            input_schema: json!({
                "type": "object",
                "properties": { "path": name_schema() },
                "required": ["path"],
                "additionalProperties": false
            }),
        }
    }

    async fn call(&self, context: ToolContext, arguments: Value) -> Result<Value, ToolError> {
        let name = arguments["path"].as_str().unwrap_or_default();
        let content = self.0.read(context.task_id, name).await?;
        Ok(json!({ "path": name, "content": content }))
    }

    async fn replay(
        &self,
        context: ToolContext,
        workspace: &Workspaces,
        arguments: Value,
    ) -> Result<Value, ToolError> {
        ReadFile(workspace.clone()).call(context, arguments).await
    }
}

/// `write_file`: writes a whole file in the task's workspace.
pub struct WriteFile(pub Workspaces);

#[async_trait]
impl Tool for WriteFile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "write_file",
            description: "Write (create or replace) a file in the task's workspace.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": name_schema(),
                    "content": { "type": "string", "maxLength": MAX_FILE_BYTES }
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        }
    }

    async fn call(&self, context: ToolContext, arguments: Value) -> Result<Value, ToolError> {
        let name = arguments["path"].as_str().unwrap_or_default();
        let content = arguments["content"].as_str().unwrap_or_default();
        self.0.write(context.task_id, name, content).await?;
        Ok(json!({ "path": name, "bytes": content.len() }))
    }

    async fn replay(
        &self,
        context: ToolContext,
        workspace: &Workspaces,
        arguments: Value,
    ) -> Result<Value, ToolError> {
        WriteFile(workspace.clone()).call(context, arguments).await
    }
}

/// `list_files`: the task workspace's files.
pub struct ListFiles(pub Workspaces);

#[async_trait]
impl Tool for ListFiles {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "list_files",
            description: "List the files of the task's workspace.",
            input_schema: json!({ "type": "object", "properties": {}, "additionalProperties": false }),
        }
    }

    async fn call(&self, context: ToolContext, _arguments: Value) -> Result<Value, ToolError> {
        Ok(json!({ "files": self.0.names(context.task_id).await? }))
    }

    async fn replay(
        &self,
        context: ToolContext,
        workspace: &Workspaces,
        arguments: Value,
    ) -> Result<Value, ToolError> {
        ListFiles(workspace.clone()).call(context, arguments).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_stay_inside_the_task_workspace() {
        let dir = std::env::temp_dir().join(format!("troupe-ws-{}", uuid::Uuid::new_v4()));
        let workspaces = Workspaces::new(&dir);
        let task = TaskId::new();
        workspaces.write(task, "a.py", "print(1)").await.unwrap();
        assert_eq!(workspaces.read(task, "a.py").await.unwrap(), "print(1)");
        assert_eq!(workspaces.names(task).await.unwrap(), vec!["a.py"]);
        for bad in ["../a.py", "/etc/passwd", "sub/a.py", ".hidden"] {
            assert!(matches!(
                workspaces.write(task, bad, "x").await,
                Err(ToolError::InvalidInput(_))
            ));
            assert!(workspaces.read(task, bad).await.is_err());
        }
        // Another task sees nothing of it.
        assert!(workspaces.read(TaskId::new(), "a.py").await.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
