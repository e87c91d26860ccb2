"""Fixtures shared by several files of tests/grpc (the session's server, database and stubs are in
tests/conftest.py).

`population` here is BatchVerify's population of registered citizens with cards
(test_batch_verify.py, test_verify_batches.py); files that talk to PopulationService define their
own `population` fixture (the service's stub), which takes precedence in those files.
`audit`, `auditor` and `calls` serve the audit log's files (test_audit_entries.py,
test_access_log.py). `world`, `tables` and `server_log` serve the fuzzing's files.
"""

from tests.grpc.audit_log import audit, auditor, calls  # noqa: F401 (fixtures)
from tests.grpc.fuzz_calls import server_log  # noqa: F401 (fixture)
from tests.grpc.fuzz_world import tables, world  # noqa: F401 (fixtures)
from tests.grpc.identity import population, private_dsn  # noqa: F401 (fixtures)
