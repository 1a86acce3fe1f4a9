# Copied by tests/contract/install into the schemathesis venv's site-packages with a .pth line that
# imports it at start-up (not as sitecustomize.py: Debian's own sitecustomize comes first).
#
# Hypothesis names every filtered strategy by parsing its lambda's source with ast.parse. Deep in a call
# stack, in a thread, CPython 3.11 (3.11.2 and 3.11.7 seen here) sometimes raises "SystemError: AST
# constructor recursion depth mismatch" from that parse, and schemathesis reports the operation as a
# runtime error though nothing was sent. The name only decorates the strategy's repr, so a failed parse
# falls back to a plain one; nothing that is generated or checked changes.
import hypothesis.internal.lambda_sources as _lambda_sources

_describe = _lambda_sources.lambda_description


def _lambda_description(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda"


_lambda_sources.lambda_description = _lambda_description
