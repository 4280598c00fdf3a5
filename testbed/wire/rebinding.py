"""The replayer's re-binding table, beside the command table: per command, the values a live
reply hands out and where later requests carry them.

A replay logs in afresh, so the lab hands out its own values: a session key, a uin, message
ids, a CDN key, sync keys. Each row says, for one command, which fields of its reply hand
such a value out (`hands_out`) and which fields of its request carry one (`carries`), by
field path (`testbed.replay.tree`: dotted names, `[]` for every element of a repeated
field, `[key]` for every element, told apart by its field `key`). The replayer pairs the
recorded value of a handed-out field with the live one and, in every later request, across
hosts and connections, puts the live value where the recording had the recorded one. The
values of a kind in `PER_CLIENT` are the same numbers for different users (sync keys), so
they are bound per recorded client.

`GET` is the plain HTTP GET (the avatar and image CDNs): its `url` is the absolute URL it
asked for. A command without a row carries only the `BaseRequest` (`BASE`).

Server replay goes the other way: the lab answers with recorded replies, and it is the client
that picks values afresh on every run (the ids of its messages and uploads, its device id).
`picks` names those request fields: matching a live request to a recorded one lets them
differ, and binds the recorded value to the live one; `echoes` names the reply fields that
hand such a value back (a send's answer, a sync item of the message), where the live value
is put in place of the recorded one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """A field of one kind of value: `kind` names what it is, `path` where it is."""

    kind: str
    path: str


#: what every request's `BaseRequest` holds that its client picked: the device id
BASE_PICKS = (Field("device_id", "base.device_id"),)


@dataclass(frozen=True)
class Rebind:
    hands_out: tuple[Field, ...] = ()     # in the reply: a value the lab hands out
    carries: tuple[Field, ...] = ()       # in the request: a value the lab handed out
    picks: tuple[Field, ...] = BASE_PICKS   # in the request: a value the client picked
    echoes: tuple[Field, ...] = ()        # in the reply: a value the client picked


#: the kinds of value a replay re-binds (the lab's, then the client's own)
KINDS = ("uin", "session_key", "sync_key", "msg_id", "cdn_url", "avatar_url", "username",
         "client_msg_id", "device_id")
PER_CLIENT = frozenset({"sync_key"})

BASE = (Field("uin", "base.uin"), Field("session_key", "base.session_key"))
SYNC_KEY = Field("sync_key", "key_buf.keys[key].val")
_ITEM = "cmd_list[].cmd_buf"           # a sync item's body: AddMsg, ModContact, ModUserInfo
_SYNC = Rebind(
    hands_out=(SYNC_KEY, Field("msg_id", f"{_ITEM}.new_msg_id"),
               Field("cdn_url", f"{_ITEM}.media.cdn_url"),
               Field("avatar_url", f"{_ITEM}.avatar_small_url"),
               Field("avatar_url", f"{_ITEM}.avatar_big_url"),
               Field("username", f"{_ITEM}.username"), Field("username", f"{_ITEM}.from_user"),
               Field("username", f"{_ITEM}.to_user")),
    carries=BASE + (SYNC_KEY,),
    echoes=(Field("client_msg_id", f"{_ITEM}.client_msg_id"),))
_UPLOAD = Rebind(hands_out=(Field("msg_id", "new_msg_id"),),
                 carries=BASE + (Field("username", "to_user"),),
                 picks=BASE_PICKS + (Field("client_msg_id", "client_media_id"),),
                 echoes=(Field("client_msg_id", "client_media_id"),))
_DOWNLOAD = Rebind(hands_out=(Field("msg_id", "msg_id"),),
                   carries=BASE + (Field("msg_id", "msg_id"),))
_CONTACTS = (Field("username", "contacts[].username"),
             Field("avatar_url", "contacts[].avatar_small_url"),
             Field("avatar_url", "contacts[].avatar_big_url"))

REBINDING: dict[str, Rebind] = {
    "MANUALAUTH": Rebind(hands_out=(Field("uin", "uin"), Field("session_key", "session_key"))),
    "IDENTIFY": Rebind(carries=BASE + (SYNC_KEY,)),
    "NEWSYNC": _SYNC,
    "NEWINIT": _SYNC,
    "NEWSENDMSG": Rebind(hands_out=(Field("msg_id", "msgs[].new_msg_id"),
                                    Field("username", "msgs[].to_user")),
                         carries=BASE + (Field("username", "msgs[].to_user"),),
                         picks=BASE_PICKS + (Field("client_msg_id", "msgs[].client_msg_id"),),
                         echoes=(Field("client_msg_id", "msgs[].client_msg_id"),)),
    "UPLOADMSGIMG": _UPLOAD, "UPLOADVOICE": _UPLOAD, "UPLOADVIDEO": _UPLOAD,
    "GETMSGIMG": _DOWNLOAD, "DOWNLOADVOICE": _DOWNLOAD, "DOWNLOADVIDEO": _DOWNLOAD,
    "GETCONTACT": Rebind(hands_out=_CONTACTS,
                         carries=BASE + (Field("username", "usernames[]"),)),
    "VERIFYUSER": Rebind(hands_out=(Field("username", "username"),),
                         carries=BASE + (Field("username", "username"),)),
    "GETPROFILE": Rebind(hands_out=(Field("username", "profile.username"),
                                    Field("avatar_url", "profile.avatar_small_url"),
                                    Field("avatar_url", "profile.avatar_big_url")),
                         carries=BASE),
    "BATCHGETHEADIMG": Rebind(hands_out=(Field("username", "imgs[].username"),
                                         Field("avatar_url", "imgs[].url_small"),
                                         Field("avatar_url", "imgs[].url_big")),
                              carries=BASE + (Field("username", "usernames[]"),)),
    "LBSFIND": Rebind(hands_out=(Field("username", "contacts[].username"),
                                 Field("avatar_url", "contacts[].avatar_url")),
                      carries=BASE),
    "GET": Rebind(carries=(Field("avatar_url", "url"), Field("cdn_url", "url")), picks=()),
}


def rebinding(name: str) -> Rebind:
    """The row of a command (or `GET`): what its reply hands out, what its request carries,
    what the client picks and where a reply echoes it."""
    return REBINDING.get(name, Rebind(carries=BASE))
