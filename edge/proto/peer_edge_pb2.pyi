from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerMessage(_message.Message):
    __slots__ = ("request_id", "registration_request", "file_delete_response", "file_hash_response", "batch_file_offer_request", "screenshot_capture_response", "file_remap_response", "heartbeat")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    FILE_DELETE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FILE_HASH_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FILE_OFFER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SCREENSHOT_CAPTURE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FILE_REMAP_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    registration_request: PeerRegistrationRequest
    file_delete_response: FileDeleteResponse
    file_hash_response: FileHashResponse
    batch_file_offer_request: BatchFileOfferRequest
    screenshot_capture_response: ScreenshotCaptureResponse
    file_remap_response: FileRemapResponse
    heartbeat: Heartbeat
    def __init__(self, request_id: _Optional[str] = ..., registration_request: _Optional[_Union[PeerRegistrationRequest, _Mapping]] = ..., file_delete_response: _Optional[_Union[FileDeleteResponse, _Mapping]] = ..., file_hash_response: _Optional[_Union[FileHashResponse, _Mapping]] = ..., batch_file_offer_request: _Optional[_Union[BatchFileOfferRequest, _Mapping]] = ..., screenshot_capture_response: _Optional[_Union[ScreenshotCaptureResponse, _Mapping]] = ..., file_remap_response: _Optional[_Union[FileRemapResponse, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class EdgeMessage(_message.Message):
    __slots__ = ("request_id", "registration_response", "file_delete_request", "file_hash_request", "batch_file_offer_response", "file_remap_request", "screenshot_capture_request", "heartbeat")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FILE_DELETE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    FILE_HASH_REQUEST_FIELD_NUMBER: _ClassVar[int]
    BATCH_FILE_OFFER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FILE_REMAP_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SCREENSHOT_CAPTURE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    registration_response: PeerRegistrationResponse
    file_delete_request: FileDeleteRequest
    file_hash_request: FileHashRequest
    batch_file_offer_response: BatchFileOfferResponse
    file_remap_request: FileRemapRequest
    screenshot_capture_request: ScreenshotCaptureRequest
    heartbeat: Heartbeat
    def __init__(self, request_id: _Optional[str] = ..., registration_response: _Optional[_Union[PeerRegistrationResponse, _Mapping]] = ..., file_delete_request: _Optional[_Union[FileDeleteRequest, _Mapping]] = ..., file_hash_request: _Optional[_Union[FileHashRequest, _Mapping]] = ..., batch_file_offer_response: _Optional[_Union[BatchFileOfferResponse, _Mapping]] = ..., file_remap_request: _Optional[_Union[FileRemapRequest, _Mapping]] = ..., screenshot_capture_request: _Optional[_Union[ScreenshotCaptureRequest, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class PeerRegistrationRequest(_message.Message):
    __slots__ = ("peer_name", "catalog_uuids")
    PEER_NAME_FIELD_NUMBER: _ClassVar[int]
    CATALOG_UUIDS_FIELD_NUMBER: _ClassVar[int]
    peer_name: str
    catalog_uuids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peer_name: _Optional[str] = ..., catalog_uuids: _Optional[_Iterable[str]] = ...) -> None: ...

class PeerRegistrationResponse(_message.Message):
    __slots__ = ("peer_name", "edge_name", "success", "heartbeat_interval_sec", "peer_timeout_sec", "session_id", "error_message")
    PEER_NAME_FIELD_NUMBER: _ClassVar[int]
    EDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SEC_FIELD_NUMBER: _ClassVar[int]
    PEER_TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    peer_name: str
    edge_name: str
    success: bool
    heartbeat_interval_sec: int
    peer_timeout_sec: int
    session_id: str
    error_message: str
    def __init__(self, peer_name: _Optional[str] = ..., edge_name: _Optional[str] = ..., success: _Optional[bool] = ..., heartbeat_interval_sec: _Optional[int] = ..., peer_timeout_sec: _Optional[int] = ..., session_id: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class FileDeleteRequest(_message.Message):
    __slots__ = ("catalog_uuids",)
    CATALOG_UUIDS_FIELD_NUMBER: _ClassVar[int]
    catalog_uuids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, catalog_uuids: _Optional[_Iterable[str]] = ...) -> None: ...

class FileDeleteResponse(_message.Message):
    __slots__ = ("catalog_uuid", "success", "error_message")
    CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    catalog_uuid: str
    success: bool
    error_message: str
    def __init__(self, catalog_uuid: _Optional[str] = ..., success: _Optional[bool] = ..., error_message: _Optional[str] = ...) -> None: ...

class FileHashRequest(_message.Message):
    __slots__ = ("catalog_uuid", "hash_types")
    CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    HASH_TYPES_FIELD_NUMBER: _ClassVar[int]
    catalog_uuid: str
    hash_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, catalog_uuid: _Optional[str] = ..., hash_types: _Optional[_Iterable[str]] = ...) -> None: ...

class FileHashResponse(_message.Message):
    __slots__ = ("catalog_uuid", "hashes", "error_message")
    class HashesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    catalog_uuid: str
    hashes: _containers.ScalarMap[str, str]
    error_message: str
    def __init__(self, catalog_uuid: _Optional[str] = ..., hashes: _Optional[_Mapping[str, str]] = ..., error_message: _Optional[str] = ...) -> None: ...

class FileOfferItem(_message.Message):
    __slots__ = ("peer_luid", "relative_path", "size_bytes")
    PEER_LUID_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    peer_luid: str
    relative_path: str
    size_bytes: int
    def __init__(self, peer_luid: _Optional[str] = ..., relative_path: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class BatchFileOfferRequest(_message.Message):
    __slots__ = ("files", "category_type")
    FILES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_TYPE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileOfferItem]
    category_type: str
    def __init__(self, files: _Optional[_Iterable[_Union[FileOfferItem, _Mapping]]] = ..., category_type: _Optional[str] = ...) -> None: ...

class FileOfferResult(_message.Message):
    __slots__ = ("peer_luid", "catalog_uuid")
    PEER_LUID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    peer_luid: str
    catalog_uuid: str
    def __init__(self, peer_luid: _Optional[str] = ..., catalog_uuid: _Optional[str] = ...) -> None: ...

class BatchFileOfferResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileOfferResult]
    def __init__(self, files: _Optional[_Iterable[_Union[FileOfferResult, _Mapping]]] = ...) -> None: ...

class FileRemapRequest(_message.Message):
    __slots__ = ("old_catalog_uuid", "new_catalog_uuid")
    OLD_CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    NEW_CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    old_catalog_uuid: str
    new_catalog_uuid: str
    def __init__(self, old_catalog_uuid: _Optional[str] = ..., new_catalog_uuid: _Optional[str] = ...) -> None: ...

class FileRemapResponse(_message.Message):
    __slots__ = ("new_catalog_uuid", "success", "error_message")
    NEW_CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    new_catalog_uuid: str
    success: bool
    error_message: str
    def __init__(self, new_catalog_uuid: _Optional[str] = ..., success: _Optional[bool] = ..., error_message: _Optional[str] = ...) -> None: ...

class ScreenshotCaptureRequest(_message.Message):
    __slots__ = ("catalog_uuid", "quantity", "upload_token", "upload_endpoint", "request_id")
    CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    catalog_uuid: str
    quantity: int
    upload_token: str
    upload_endpoint: str
    request_id: str
    def __init__(self, catalog_uuid: _Optional[str] = ..., quantity: _Optional[int] = ..., upload_token: _Optional[str] = ..., upload_endpoint: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ScreenshotData(_message.Message):
    __slots__ = ("frame_number_in_video", "screenshot")
    FRAME_NUMBER_IN_VIDEO_FIELD_NUMBER: _ClassVar[int]
    SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    frame_number_in_video: int
    screenshot: bytes
    def __init__(self, frame_number_in_video: _Optional[int] = ..., screenshot: _Optional[bytes] = ...) -> None: ...

class ScreenshotCaptureResponse(_message.Message):
    __slots__ = ("catalog_uuid", "screenshot", "error_message")
    CATALOG_UUID_FIELD_NUMBER: _ClassVar[int]
    SCREENSHOT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    catalog_uuid: str
    screenshot: ScreenshotData
    error_message: str
    def __init__(self, catalog_uuid: _Optional[str] = ..., screenshot: _Optional[_Union[ScreenshotData, _Mapping]] = ..., error_message: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at_unix_ms",)
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    sent_at_unix_ms: int
    def __init__(self, sent_at_unix_ms: _Optional[int] = ...) -> None: ...
