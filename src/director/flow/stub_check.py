# Troupe's vacuous-test check, run in the sandbox like any generated code (it is sent as a `run_code` snippet
# with CODE and TEST, the step's code and test, assigned above this text by the Director).
#
# It answers one JSON line: the functions (and classes) the code defines at its top level, those the test
# calls, whether the test asserts anything, and whether the test passes against a *stub* of the code: the same
# module with every function body replaced by `raise NotImplementedError` (signatures, decorators, imports
# and classes kept; the code's other top-level statements run with what they raise ignored). A test that passes against the stub cannot fail whatever the functions do: it never
# calls them (an `assert True`, a test of something else), or swallows what they raise. The stubbed test
# runs in its own process so that nothing it prints or does reaches this answer.
import ast
import json
import subprocess
import sys


def raise_not_implemented():
    return ast.Raise(
        exc=ast.Call(func=ast.Name(id="NotImplementedError", ctx=ast.Load()), args=[], keywords=[]),
        cause=None,
    )


DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def stubbed(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = [raise_not_implemented()]
    # The code's own top-level statements (a demo call, an `if __name__ == "__main__":` block) would raise
    # against the stub and make any test look able to fail: each runs with what it raises ignored.
    body = []
    for node in tree.body:
        if isinstance(node, DEFINITIONS):
            body.append(node)
        else:
            handler = ast.ExceptHandler(type=ast.Name(id="Exception", ctx=ast.Load()), name=None, body=[ast.Pass()])
            body.append(ast.Try(body=[node], handlers=[handler], orelse=[], finalbody=[]))
    tree.body = body
    return ast.fix_missing_locations(tree)


result = {"functions": [], "calls": [], "asserts": False, "passes_against_stub": False, "error": None}
try:
    code = ast.parse(CODE)  # noqa: F821 (assigned by the Director)
    test = ast.parse(TEST)  # noqa: F821
except SyntaxError as error:
    result["error"] = "syntax error: %s" % error
else:
    functions = [n for n in code.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    classes = [n for n in code.body if isinstance(n, ast.ClassDef)]
    names = {n.name for n in functions} | {n.name for n in classes}
    result["functions"] = ["%s(%s)" % (n.name, ast.unparse(n.args)) for n in functions]
    result["functions"] += [n.name for n in classes]
    called = set()
    for node in ast.walk(test):
        if isinstance(node, ast.Assert):
            result["asserts"] = True
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in names:
                called.add(node.func.id)
            if isinstance(node.func, ast.Attribute) and node.func.attr.startswith("assert"):
                result["asserts"] = True
    result["calls"] = sorted(called)
    with open("stub_test.py", "w") as stub:
        stub.write(ast.unparse(stubbed(code)) + "\n\n" + TEST + "\n")  # noqa: F821
    try:
        run = subprocess.run([sys.executable, "stub_test.py"], capture_output=True, timeout=5)
        result["passes_against_stub"] = run.returncode == 0
    except subprocess.TimeoutExpired:
        result["passes_against_stub"] = False
print(json.dumps(result))
