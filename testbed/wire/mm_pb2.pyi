from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BaseRequest(_message.Message):
    __slots__ = ("session_key", "uin", "device_id", "client_version", "device_type", "scene")
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    UIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    session_key: bytes
    uin: int
    device_id: bytes
    client_version: int
    device_type: str
    scene: int
    def __init__(self, session_key: _Optional[bytes] = ..., uin: _Optional[int] = ..., device_id: _Optional[bytes] = ..., client_version: _Optional[int] = ..., device_type: _Optional[str] = ..., scene: _Optional[int] = ...) -> None: ...

class BaseResponse(_message.Message):
    __slots__ = ("ret", "errmsg")
    RET_FIELD_NUMBER: _ClassVar[int]
    ERRMSG_FIELD_NUMBER: _ClassVar[int]
    ret: int
    errmsg: str
    def __init__(self, ret: _Optional[int] = ..., errmsg: _Optional[str] = ...) -> None: ...

class ErrorResponse(_message.Message):
    __slots__ = ("base",)
    BASE_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ...) -> None: ...

class ManualAuthRequest(_message.Message):
    __slots__ = ("base", "username", "password")
    BASE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    username: str
    password: str
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class ManualAuthResponse(_message.Message):
    __slots__ = ("base", "uin", "session_key", "nickname", "long_hosts", "short_hosts")
    BASE_FIELD_NUMBER: _ClassVar[int]
    UIN_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    NICKNAME_FIELD_NUMBER: _ClassVar[int]
    LONG_HOSTS_FIELD_NUMBER: _ClassVar[int]
    SHORT_HOSTS_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    uin: int
    session_key: bytes
    nickname: str
    long_hosts: _containers.RepeatedScalarFieldContainer[str]
    short_hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., uin: _Optional[int] = ..., session_key: _Optional[bytes] = ..., nickname: _Optional[str] = ..., long_hosts: _Optional[_Iterable[str]] = ..., short_hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyVal(_message.Message):
    __slots__ = ("key", "val")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    key: int
    val: int
    def __init__(self, key: _Optional[int] = ..., val: _Optional[int] = ...) -> None: ...

class SyncKey(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyVal]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyVal, _Mapping]]] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("base", "key_buf")
    BASE_FIELD_NUMBER: _ClassVar[int]
    KEY_BUF_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    key_buf: SyncKey
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., key_buf: _Optional[_Union[SyncKey, _Mapping]] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("base",)
    BASE_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ...) -> None: ...

class NewSyncRequest(_message.Message):
    __slots__ = ("base", "selector", "key_buf")
    BASE_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    KEY_BUF_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    selector: int
    key_buf: SyncKey
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., selector: _Optional[int] = ..., key_buf: _Optional[_Union[SyncKey, _Mapping]] = ...) -> None: ...

class CmdItem(_message.Message):
    __slots__ = ("cmd_id", "cmd_buf")
    CMD_ID_FIELD_NUMBER: _ClassVar[int]
    CMD_BUF_FIELD_NUMBER: _ClassVar[int]
    cmd_id: int
    cmd_buf: bytes
    def __init__(self, cmd_id: _Optional[int] = ..., cmd_buf: _Optional[bytes] = ...) -> None: ...

class NewSyncResponse(_message.Message):
    __slots__ = ("base", "cmd_list", "continue_flag", "key_buf")
    BASE_FIELD_NUMBER: _ClassVar[int]
    CMD_LIST_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_FLAG_FIELD_NUMBER: _ClassVar[int]
    KEY_BUF_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    cmd_list: _containers.RepeatedCompositeFieldContainer[CmdItem]
    continue_flag: int
    key_buf: SyncKey
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., cmd_list: _Optional[_Iterable[_Union[CmdItem, _Mapping]]] = ..., continue_flag: _Optional[int] = ..., key_buf: _Optional[_Union[SyncKey, _Mapping]] = ...) -> None: ...

class MediaRef(_message.Message):
    __slots__ = ("total_len", "sha256", "cdn_url")
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CDN_URL_FIELD_NUMBER: _ClassVar[int]
    total_len: int
    sha256: bytes
    cdn_url: str
    def __init__(self, total_len: _Optional[int] = ..., sha256: _Optional[bytes] = ..., cdn_url: _Optional[str] = ...) -> None: ...

class AddMsg(_message.Message):
    __slots__ = ("new_msg_id", "from_user", "to_user", "msg_type", "content", "create_time", "client_msg_id", "media")
    NEW_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_USER_FIELD_NUMBER: _ClassVar[int]
    TO_USER_FIELD_NUMBER: _ClassVar[int]
    MSG_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    new_msg_id: int
    from_user: str
    to_user: str
    msg_type: int
    content: str
    create_time: int
    client_msg_id: str
    media: MediaRef
    def __init__(self, new_msg_id: _Optional[int] = ..., from_user: _Optional[str] = ..., to_user: _Optional[str] = ..., msg_type: _Optional[int] = ..., content: _Optional[str] = ..., create_time: _Optional[int] = ..., client_msg_id: _Optional[str] = ..., media: _Optional[_Union[MediaRef, _Mapping]] = ...) -> None: ...

class ModContact(_message.Message):
    __slots__ = ("username", "nickname", "sex", "signature", "city", "avatar_small_url", "avatar_big_url")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    NICKNAME_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    AVATAR_SMALL_URL_FIELD_NUMBER: _ClassVar[int]
    AVATAR_BIG_URL_FIELD_NUMBER: _ClassVar[int]
    username: str
    nickname: str
    sex: int
    signature: str
    city: str
    avatar_small_url: str
    avatar_big_url: str
    def __init__(self, username: _Optional[str] = ..., nickname: _Optional[str] = ..., sex: _Optional[int] = ..., signature: _Optional[str] = ..., city: _Optional[str] = ..., avatar_small_url: _Optional[str] = ..., avatar_big_url: _Optional[str] = ...) -> None: ...

class ModUserInfo(_message.Message):
    __slots__ = ("username", "nickname", "sex", "signature", "city", "avatar_small_url", "avatar_big_url")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    NICKNAME_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    AVATAR_SMALL_URL_FIELD_NUMBER: _ClassVar[int]
    AVATAR_BIG_URL_FIELD_NUMBER: _ClassVar[int]
    username: str
    nickname: str
    sex: int
    signature: str
    city: str
    avatar_small_url: str
    avatar_big_url: str
    def __init__(self, username: _Optional[str] = ..., nickname: _Optional[str] = ..., sex: _Optional[int] = ..., signature: _Optional[str] = ..., city: _Optional[str] = ..., avatar_small_url: _Optional[str] = ..., avatar_big_url: _Optional[str] = ...) -> None: ...

class DelContact(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class MicroMsgRequest(_message.Message):
    __slots__ = ("to_user", "content", "msg_type", "create_time", "client_msg_id")
    TO_USER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MSG_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    to_user: str
    content: str
    msg_type: int
    create_time: int
    client_msg_id: str
    def __init__(self, to_user: _Optional[str] = ..., content: _Optional[str] = ..., msg_type: _Optional[int] = ..., create_time: _Optional[int] = ..., client_msg_id: _Optional[str] = ...) -> None: ...

class NewSendMsgRequest(_message.Message):
    __slots__ = ("base", "msgs")
    BASE_FIELD_NUMBER: _ClassVar[int]
    MSGS_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    msgs: _containers.RepeatedCompositeFieldContainer[MicroMsgRequest]
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., msgs: _Optional[_Iterable[_Union[MicroMsgRequest, _Mapping]]] = ...) -> None: ...

class MicroMsgResponse(_message.Message):
    __slots__ = ("ret", "to_user", "client_msg_id", "new_msg_id", "create_time")
    RET_FIELD_NUMBER: _ClassVar[int]
    TO_USER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ret: int
    to_user: str
    client_msg_id: str
    new_msg_id: int
    create_time: int
    def __init__(self, ret: _Optional[int] = ..., to_user: _Optional[str] = ..., client_msg_id: _Optional[str] = ..., new_msg_id: _Optional[int] = ..., create_time: _Optional[int] = ...) -> None: ...

class NewSendMsgResponse(_message.Message):
    __slots__ = ("base", "msgs")
    BASE_FIELD_NUMBER: _ClassVar[int]
    MSGS_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    msgs: _containers.RepeatedCompositeFieldContainer[MicroMsgResponse]
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., msgs: _Optional[_Iterable[_Union[MicroMsgResponse, _Mapping]]] = ...) -> None: ...

class UploadMediaRequest(_message.Message):
    __slots__ = ("base", "client_media_id", "to_user", "msg_type", "total_len", "start_pos", "data")
    BASE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    TO_USER_FIELD_NUMBER: _ClassVar[int]
    MSG_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    client_media_id: str
    to_user: str
    msg_type: int
    total_len: int
    start_pos: int
    data: bytes
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., client_media_id: _Optional[str] = ..., to_user: _Optional[str] = ..., msg_type: _Optional[int] = ..., total_len: _Optional[int] = ..., start_pos: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadMediaResponse(_message.Message):
    __slots__ = ("base", "client_media_id", "start_pos", "total_len", "new_msg_id")
    BASE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    NEW_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    client_media_id: str
    start_pos: int
    total_len: int
    new_msg_id: int
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., client_media_id: _Optional[str] = ..., start_pos: _Optional[int] = ..., total_len: _Optional[int] = ..., new_msg_id: _Optional[int] = ...) -> None: ...

class DownloadMediaRequest(_message.Message):
    __slots__ = ("base", "msg_id", "start_pos", "max_len")
    BASE_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    msg_id: int
    start_pos: int
    max_len: int
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., msg_id: _Optional[int] = ..., start_pos: _Optional[int] = ..., max_len: _Optional[int] = ...) -> None: ...

class DownloadMediaResponse(_message.Message):
    __slots__ = ("base", "msg_id", "total_len", "start_pos", "data")
    BASE_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    msg_id: int
    total_len: int
    start_pos: int
    data: bytes
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., msg_id: _Optional[int] = ..., total_len: _Optional[int] = ..., start_pos: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetContactRequest(_message.Message):
    __slots__ = ("base", "usernames")
    BASE_FIELD_NUMBER: _ClassVar[int]
    USERNAMES_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    usernames: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., usernames: _Optional[_Iterable[str]] = ...) -> None: ...

class GetContactResponse(_message.Message):
    __slots__ = ("base", "contacts")
    BASE_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    contacts: _containers.RepeatedCompositeFieldContainer[ModContact]
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., contacts: _Optional[_Iterable[_Union[ModContact, _Mapping]]] = ...) -> None: ...

class VerifyUserRequest(_message.Message):
    __slots__ = ("base", "opcode", "username", "verify_content")
    BASE_FIELD_NUMBER: _ClassVar[int]
    OPCODE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    VERIFY_CONTENT_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    opcode: int
    username: str
    verify_content: str
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., opcode: _Optional[int] = ..., username: _Optional[str] = ..., verify_content: _Optional[str] = ...) -> None: ...

class VerifyUserResponse(_message.Message):
    __slots__ = ("base", "username")
    BASE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    username: str
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., username: _Optional[str] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("base",)
    BASE_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("base", "profile")
    BASE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    profile: ModUserInfo
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., profile: _Optional[_Union[ModUserInfo, _Mapping]] = ...) -> None: ...

class BatchGetHeadImgRequest(_message.Message):
    __slots__ = ("base", "usernames")
    BASE_FIELD_NUMBER: _ClassVar[int]
    USERNAMES_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    usernames: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., usernames: _Optional[_Iterable[str]] = ...) -> None: ...

class HeadImg(_message.Message):
    __slots__ = ("username", "url_small", "url_big")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    URL_SMALL_FIELD_NUMBER: _ClassVar[int]
    URL_BIG_FIELD_NUMBER: _ClassVar[int]
    username: str
    url_small: str
    url_big: str
    def __init__(self, username: _Optional[str] = ..., url_small: _Optional[str] = ..., url_big: _Optional[str] = ...) -> None: ...

class BatchGetHeadImgResponse(_message.Message):
    __slots__ = ("base", "imgs")
    BASE_FIELD_NUMBER: _ClassVar[int]
    IMGS_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    imgs: _containers.RepeatedCompositeFieldContainer[HeadImg]
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., imgs: _Optional[_Iterable[_Union[HeadImg, _Mapping]]] = ...) -> None: ...

class LbsFindRequest(_message.Message):
    __slots__ = ("base", "opcode", "longitude", "latitude", "precision", "gps_source")
    BASE_FIELD_NUMBER: _ClassVar[int]
    OPCODE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    GPS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    opcode: int
    longitude: float
    latitude: float
    precision: int
    gps_source: int
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., opcode: _Optional[int] = ..., longitude: _Optional[float] = ..., latitude: _Optional[float] = ..., precision: _Optional[int] = ..., gps_source: _Optional[int] = ...) -> None: ...

class LbsContact(_message.Message):
    __slots__ = ("username", "nickname", "city", "signature", "distance", "distance_m", "sex", "avatar_url")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    NICKNAME_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    AVATAR_URL_FIELD_NUMBER: _ClassVar[int]
    username: str
    nickname: str
    city: str
    signature: str
    distance: str
    distance_m: int
    sex: int
    avatar_url: str
    def __init__(self, username: _Optional[str] = ..., nickname: _Optional[str] = ..., city: _Optional[str] = ..., signature: _Optional[str] = ..., distance: _Optional[str] = ..., distance_m: _Optional[int] = ..., sex: _Optional[int] = ..., avatar_url: _Optional[str] = ...) -> None: ...

class LbsFindResponse(_message.Message):
    __slots__ = ("base", "contact_count", "contacts", "state", "flush_time")
    BASE_FIELD_NUMBER: _ClassVar[int]
    CONTACT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FLUSH_TIME_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    contact_count: int
    contacts: _containers.RepeatedCompositeFieldContainer[LbsContact]
    state: int
    flush_time: int
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., contact_count: _Optional[int] = ..., contacts: _Optional[_Iterable[_Union[LbsContact, _Mapping]]] = ..., state: _Optional[int] = ..., flush_time: _Optional[int] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ("base",)
    BASE_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ...) -> None: ...

class LogoutResponse(_message.Message):
    __slots__ = ("base",)
    BASE_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ...) -> None: ...

class KV(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: int
    value: str
    def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("base", "items")
    BASE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    base: BaseRequest
    items: _containers.RepeatedCompositeFieldContainer[KV]
    def __init__(self, base: _Optional[_Union[BaseRequest, _Mapping]] = ..., items: _Optional[_Iterable[_Union[KV, _Mapping]]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("base", "accepted")
    BASE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    base: BaseResponse
    accepted: int
    def __init__(self, base: _Optional[_Union[BaseResponse, _Mapping]] = ..., accepted: _Optional[int] = ...) -> None: ...
