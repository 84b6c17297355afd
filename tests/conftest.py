"""Suite-wide: the exit status is pytest's, whatever native threads do at interpreter teardown.

Ray's core worker, gRPC and vLLM leave native threads behind in the test process; once in a while one of them
crashes while the interpreter tears down, after the summary line (seen once locally: every test reported,
then SIGSEGV, exit 139). The results were final by then, so the process leaves with pytest's own status.
"""
import os
import sys

import pytest

_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_STATUS[-1])
