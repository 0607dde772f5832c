"""prism.driver: the app-node library.

from prism.driver import PrismDriver, DriverConfig

async with PrismDriver(DriverConfig(wrapper_host="127.0.0.1", wrapper_port=50051,
                                    tenant_id="acme", secret_file="acme.secret")) as driver:
    await driver.wait_ready()
    row = driver.get("public.items", 42)
    matches = await driver.query(text="red shoes", top_k=5)
"""

from prism.driver.api import Match, PrismDriver
from prism.driver.changes import Change
from prism.driver.config import DriverConfig
from prism.driver.errors import (
    AuthenticationError,
    ChangeFeedError,
    ChangeFeedOverflowError,
    ChangePositionExpiredError,
    ConnectionLostError,
    ConstraintViolationError,
    DatabaseUnavailableError,
    DriverConfigError,
    DriverError,
    InvalidWriteError,
    NotReadyError,
    QueryError,
    RateLimitedError,
    ReplicaLagError,
    RowNotFoundError,
    SecretRetiredError,
    SessionExpiredError,
    TenantDeniedError,
    TlsMismatchError,
    UnknownTenantError,
    WaitTimeoutError,
    WriteConflictError,
    WriteError,
    WriteOutcomeUnknownError,
    WritePermissionError,
)
from prism.driver.index import IndexParams
from prism.driver.metrics import DriverCollector
from prism.driver.schema import TableInfo
from prism.driver.writes import WriteAck, WriteOp

__all__ = [
    "AuthenticationError",
    "Change",
    "ChangeFeedError",
    "ChangeFeedOverflowError",
    "ChangePositionExpiredError",
    "ConnectionLostError",
    "ConstraintViolationError",
    "DatabaseUnavailableError",
    "DriverCollector",
    "DriverConfig",
    "DriverConfigError",
    "DriverError",
    "IndexParams",
    "InvalidWriteError",
    "Match",
    "NotReadyError",
    "PrismDriver",
    "QueryError",
    "RateLimitedError",
    "ReplicaLagError",
    "RowNotFoundError",
    "SecretRetiredError",
    "SessionExpiredError",
    "TableInfo",
    "TenantDeniedError",
    "TlsMismatchError",
    "UnknownTenantError",
    "WaitTimeoutError",
    "WriteAck",
    "WriteConflictError",
    "WriteError",
    "WriteOp",
    "WriteOutcomeUnknownError",
    "WritePermissionError",
]
