from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    NOT_FOUND: _ClassVar[ErrorReason]
    ALREADY_EXISTS: _ClassVar[ErrorReason]
    REFERENCED_RESOURCE_MISSING: _ClassVar[ErrorReason]
    FIELD_REQUIRED: _ClassVar[ErrorReason]
    CONSTRAINT_VIOLATION: _ClassVar[ErrorReason]
    CONCURRENT_UPDATE: _ClassVar[ErrorReason]
    LOCK_NOT_AVAILABLE: _ClassVar[ErrorReason]
    DEADLOCK: _ClassVar[ErrorReason]
    DATABASE_TIMEOUT: _ClassVar[ErrorReason]
    DATABASE_UNAVAILABLE: _ClassVar[ErrorReason]
    DATABASE_ERROR: _ClassVar[ErrorReason]
    ENCRYPTION_KEY_MISSING: _ClassVar[ErrorReason]
    ENCRYPTION_KEY_UNKNOWN: _ClassVar[ErrorReason]
    SECRET_DECRYPTION_FAILED: _ClassVar[ErrorReason]
    INTERNAL_SCOPE_ERROR: _ClassVar[ErrorReason]
    INVALID_ARGUMENT: _ClassVar[ErrorReason]
    FAILED_PRECONDITION: _ClassVar[ErrorReason]
    UNAUTHENTICATED: _ClassVar[ErrorReason]
    PERMISSION_DENIED: _ClassVar[ErrorReason]
    INVALID_TOOL_SOURCE: _ClassVar[ErrorReason]
    INVALID_PAGE_TOKEN: _ClassVar[ErrorReason]
    INTERNAL: _ClassVar[ErrorReason]
    OVERLOADED: _ClassVar[ErrorReason]
    PROVIDER_AUTH_FAILED: _ClassVar[ErrorReason]
    PROVIDER_RATE_LIMITED: _ClassVar[ErrorReason]
    PROVIDER_UNAVAILABLE: _ClassVar[ErrorReason]
    PROVIDER_TIMEOUT: _ClassVar[ErrorReason]
    PROVIDER_REJECTED_REQUEST: _ClassVar[ErrorReason]
    CONTEXT_WINDOW_EXCEEDED: _ClassVar[ErrorReason]
    INVALID_PROVIDER_RESPONSE: _ClassVar[ErrorReason]
    PROVIDER_NOT_CONFIGURED: _ClassVar[ErrorReason]
    UPLOAD_TOO_LARGE: _ClassVar[ErrorReason]
    UNSUPPORTED_MEDIA_TYPE: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
NOT_FOUND: ErrorReason
ALREADY_EXISTS: ErrorReason
REFERENCED_RESOURCE_MISSING: ErrorReason
FIELD_REQUIRED: ErrorReason
CONSTRAINT_VIOLATION: ErrorReason
CONCURRENT_UPDATE: ErrorReason
LOCK_NOT_AVAILABLE: ErrorReason
DEADLOCK: ErrorReason
DATABASE_TIMEOUT: ErrorReason
DATABASE_UNAVAILABLE: ErrorReason
DATABASE_ERROR: ErrorReason
ENCRYPTION_KEY_MISSING: ErrorReason
ENCRYPTION_KEY_UNKNOWN: ErrorReason
SECRET_DECRYPTION_FAILED: ErrorReason
INTERNAL_SCOPE_ERROR: ErrorReason
INVALID_ARGUMENT: ErrorReason
FAILED_PRECONDITION: ErrorReason
UNAUTHENTICATED: ErrorReason
PERMISSION_DENIED: ErrorReason
INVALID_TOOL_SOURCE: ErrorReason
INVALID_PAGE_TOKEN: ErrorReason
INTERNAL: ErrorReason
OVERLOADED: ErrorReason
PROVIDER_AUTH_FAILED: ErrorReason
PROVIDER_RATE_LIMITED: ErrorReason
PROVIDER_UNAVAILABLE: ErrorReason
PROVIDER_TIMEOUT: ErrorReason
PROVIDER_REJECTED_REQUEST: ErrorReason
CONTEXT_WINDOW_EXCEEDED: ErrorReason
INVALID_PROVIDER_RESPONSE: ErrorReason
PROVIDER_NOT_CONFIGURED: ErrorReason
UPLOAD_TOO_LARGE: ErrorReason
UNSUPPORTED_MEDIA_TYPE: ErrorReason
