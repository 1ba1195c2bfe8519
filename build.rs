//! Compiles `src/sandbox/shim.c`, the small process that starts each sandbox run (see that file for why),
//! into `$OUT_DIR/troupe-shim`; `src/sandbox.rs` embeds it and runs it from a memory file.

use std::path::PathBuf;
use std::process::exit;

const SOURCE: &str = "src/sandbox/shim.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        eprintln!("build.rs: cargo did not set OUT_DIR");
        exit(1);
    };
    let output = out_dir.join("troupe-shim");
    let compiler = cc::Build::new().opt_level(2).get_compiler();
    let mut command = compiler.to_command();
    command
        .args(["-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&output)
        .arg(SOURCE);
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("build.rs: compiling {SOURCE} failed ({status}): {command:?}");
            exit(1);
        }
        Err(error) => {
            eprintln!(
                "build.rs: cannot run the C compiler for {SOURCE} ({error}); install a C compiler \
                 (scripts/setup.sh installs clang)"
            );
            exit(1);
        }
    }
}
