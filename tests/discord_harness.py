"""A Discord server in memory for tests: gateway events in, REST calls recorded and answered.

The bot under test is a real discord.py client. Its ConnectionState is fed gateway payloads
(READY, GUILD_CREATE, MESSAGE_CREATE, MESSAGE_REACTION_ADD, INTERACTION_CREATE) through the
library's own parse_* handlers, and every REST call it makes — through discord.http.HTTPClient
and through the webhook/interaction adapter — is recorded and answered with realistic JSON by
FakeDiscord, so nothing touches the network.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from unittest import mock

import discord
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter

# A token of the right shape (base64 user id . timestamp . hmac); never valid anywhere.
BOT_ID = 1100000000000000001
TOKEN = (base64.b64encode(str(BOT_ID).encode()).decode().rstrip("=")
         + ".GxYz12.fake-hmac-part-for-tests-only_0123456789ab")
APP_ID = BOT_ID
GUILD_ID = 1200000000000000001
EVERYONE_ROLE = GUILD_ID
BOT_ROLE = 1200000000000000002
MOD_ROLE = 1200000000000000003
CHANNEL_ID = 1300000000000000001  # #general: the bot may use webhooks
LOCKED_CHANNEL_ID = 1300000000000000002  # #no-hooks: Manage Webhooks denied to the bot
ADMIN_CHANNEL_ID = 1300000000000000003  # #mods
THREAD_ID = 1300000000000000004  # a thread in #general
DM_CHANNEL_ID = 1300000000000000099

P = discord.Permissions
EVERYONE_PERMS = P(view_channel=True, send_messages=True, read_message_history=True, add_reactions=True,
                   use_application_commands=True)
BOT_PERMS = P(view_channel=True, send_messages=True, read_message_history=True, add_reactions=True,
              manage_webhooks=True, embed_links=True, attach_files=True, send_messages_in_threads=True)
MOD_PERMS = P(manage_channels=True, manage_guild=True, manage_messages=True)


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(timezone.utc)).isoformat()


def user_payload(user_id: int, name: str, bot: bool = False) -> dict:
    return {"id": str(user_id), "username": name.lower(), "global_name": name, "discriminator": "0",
            "avatar": None, "bot": bot, "public_flags": 0}


@dataclass
class Call:
    """One REST request the bot made."""

    method: str
    path: str
    params: dict
    json: dict | list | None
    files: list[str] = field(default_factory=list)  # attachment file names

    @property
    def route(self) -> str:
        """The path with ids and tokens replaced by placeholders (for matching)."""
        path = re.sub(r"(/(?:webhooks|interactions)/\d+)/[\w.-]+", r"\1/{token}", self.path)
        return re.sub(r"/\d{6,}", "/{id}", path)

    def __repr__(self) -> str:
        return f"Call({self.method} {self.path} {json.dumps(self.json)[:120] if self.json else ''})"


class FakeDiscord:
    """Discord's REST API for one guild, one DM and the bot: records calls, answers with JSON."""

    def __init__(self):
        self._ids = itertools.count(1500000000000000001)
        self.calls: list[Call] = []
        self.unanswered: list[Call] = []  # calls the fake could not answer: a test failure
        self.bot_user = user_payload(BOT_ID, "Personae", bot=True)
        self.messages: dict[int, dict] = {}
        self.user_messages: dict[int, dict] = {}  # what users sent (fetchable, kept apart from the bot's)
        self.files: dict[str, bytes] = {}  # attachment URL -> bytes on the CDN
        self.webhooks: dict[int, dict] = {}
        self.deny_webhooks = False  # True: creating webhooks fails with 403 Missing Permissions
        self.channels = {
            CHANNEL_ID: {"id": str(CHANNEL_ID), "type": 0, "name": "general", "position": 0,
                         "guild_id": str(GUILD_ID), "permission_overwrites": [], "nsfw": False, "topic": None,
                         "last_message_id": None, "rate_limit_per_user": 0, "parent_id": None},
            LOCKED_CHANNEL_ID: {"id": str(LOCKED_CHANNEL_ID), "type": 0, "name": "no-hooks", "position": 1,
                                "guild_id": str(GUILD_ID), "nsfw": False, "topic": None, "last_message_id": None,
                                "rate_limit_per_user": 0, "parent_id": None,
                                "permission_overwrites": [{"id": str(BOT_ROLE), "type": 0, "allow": "0",
                                                           "deny": str(P(manage_webhooks=True).value)}]},
            ADMIN_CHANNEL_ID: {"id": str(ADMIN_CHANNEL_ID), "type": 0, "name": "mods", "position": 2,
                               "guild_id": str(GUILD_ID), "permission_overwrites": [], "nsfw": False,
                               "topic": None, "last_message_id": None, "rate_limit_per_user": 0,
                               "parent_id": None},
        }
        self.threads = {
            THREAD_ID: {"id": str(THREAD_ID), "type": 11, "name": "side quest", "guild_id": str(GUILD_ID),
                        "parent_id": str(CHANNEL_ID), "owner_id": "1000000000000000011", "last_message_id": None,
                        "message_count": 0, "member_count": 1, "rate_limit_per_user": 0, "flags": 0,
                        "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "locked": False,
                                            "archive_timestamp": iso()}},
        }
        self.dm_channel = {"id": str(DM_CHANNEL_ID), "type": 1, "last_message_id": None, "recipients": []}

    def snowflake(self) -> int:
        return next(self._ids)

    # --- answering REST calls ----------------------------------------------------------

    def handle(self, call: Call):
        """(status, JSON) for a recorded call, as Discord would answer it."""
        self.calls.append(call)
        method, route, body = call.method, call.route, call.json or {}
        ids = [int(x) for x in re.findall(r"/(\d{6,})", call.path)]
        if (method, route) == ("GET", "/users/@me"):
            return 200, self.bot_user
        if (method, route) == ("GET", "/oauth2/applications/@me"):
            return 200, {"id": str(APP_ID), "name": "Personae", "description": "", "icon": None,
                         "bot_public": True, "bot_require_code_grant": False, "owner": user_payload(1, "Owner"),
                         "verify_key": "0" * 64, "flags": 0, "team": None, "summary": ""}
        if method == "PUT" and route.startswith("/applications/{id}") and route.endswith("/commands"):
            return 200, [{**command, "id": str(self.snowflake()), "application_id": str(APP_ID), "version": "1",
                          "default_member_permissions": None} for command in body]
        if (method, route) == ("POST", "/channels/{id}/typing"):
            return 204, None
        if (method, route) == ("POST", "/channels/{id}/messages"):
            return 200, self.message(ids[0], self.bot_user, body)
        if (method, route) == ("GET", "/channels/{id}/messages/{id}"):
            found = self.messages.get(ids[1]) or self.user_messages.get(ids[1])
            if found is None or found["channel_id"] != str(ids[0]):
                return 404, {"message": "Unknown Message", "code": 10008}
            return 200, found
        if (method, route) == ("PATCH", "/channels/{id}/messages/{id}"):
            return 200, self.edit(ids[1], body)
        if (method, route) == ("DELETE", "/channels/{id}/messages/{id}"):
            self.messages.pop(ids[1], None)
            return 204, None
        if (method, route) == ("GET", "/channels/{id}/webhooks"):
            return 200, [w for w in self.webhooks.values() if w["channel_id"] == str(ids[0])]
        if (method, route) == ("POST", "/channels/{id}/webhooks"):
            if self.deny_webhooks:
                return 403, {"message": "Missing Permissions", "code": 50013}
            if re.search("discord|clyde", body["name"], re.IGNORECASE):  # as Discord answers
                return 400, {"message": "Invalid Form Body", "code": 50035, "errors": {"name": {"_errors": [
                    {"code": "USERNAME_INVALID_CONTAINS", "message": "Username cannot contain \"discord\""}]}}}
            webhook = {"id": str(self.snowflake()), "type": 1, "guild_id": str(GUILD_ID), "channel_id": str(ids[0]),
                       "name": body["name"], "avatar": "a1b2c3" if body.get("avatar") else None,
                       "token": f"hook-token-{len(self.webhooks)}", "application_id": str(APP_ID),
                       "user": self.bot_user}
            self.webhooks[int(webhook["id"])] = {**webhook, "_avatar_data": body.get("avatar")}
            return 200, webhook
        if route.startswith("/webhooks/{id}/{token}") and ids[0] == APP_ID:
            return self.followup(call, ids)
        if route.startswith("/webhooks/{id}/{token}"):
            webhook = self.webhooks.get(ids[0])
            if webhook is None or not call.path.split("/")[3] == webhook["token"]:
                return 404, {"message": "Unknown Webhook", "code": 10015}
            author = {"id": webhook["id"], "username": body.get("username") or webhook["name"],
                      "avatar": webhook["avatar"], "discriminator": "0000", "bot": True}
            if (method, route) == ("POST", "/webhooks/{id}/{token}"):
                if re.search("discord|clyde", body.get("username") or "", re.IGNORECASE):
                    return 400, {"message": "Invalid Form Body", "code": 50035}
                channel = int(call.params.get("thread_id") or webhook["channel_id"])
                return 200, self.message(channel, author, body, webhook_id=webhook["id"])
            if (method, route) == ("PATCH", "/webhooks/{id}/{token}/messages/{id}"):
                return 200, self.edit(ids[1], body)
            if (method, route) == ("DELETE", "/webhooks/{id}/{token}/messages/{id}"):
                self.messages.pop(ids[1], None)
                return 204, None
        if (method, route) == ("POST", "/interactions/{id}/{token}/callback"):
            return 200, self.callback(ids[0], body)
        self.unanswered.append(call)
        raise AssertionError(f"the fake Discord has no answer for {call}")

    def message(self, channel_id: int, author: dict, body: dict, webhook_id: str | None = None) -> dict:
        message = {
            "id": str(self.snowflake()), "channel_id": str(channel_id), "author": author,
            "content": body.get("content") or "", "timestamp": iso(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [],
            "embeds": body.get("embeds") or [], "pinned": False, "type": 0, "flags": body.get("flags", 0),
            "components": body.get("components") or [],
        }
        if channel_id in self.channels or channel_id in self.threads:
            message["guild_id"] = str(GUILD_ID)
        if webhook_id:
            message["webhook_id"] = webhook_id
        self.messages[int(message["id"])] = message
        return message

    def edit(self, message_id: int, body: dict) -> dict:
        message = self.messages[message_id]
        if "content" in body:
            message["content"] = body["content"]
        if "components" in body:
            message["components"] = body["components"] or []
        message["edited_timestamp"] = iso()
        return message

    def callback(self, interaction_id: int, body: dict) -> dict:
        kind, data = body["type"], body.get("data") or {}
        ephemeral = bool(data.get("flags", 0) & 64)
        answer = {"interaction": {"id": str(interaction_id), "type": 2,
                                  "response_message_loading": kind == 5, "response_message_ephemeral": ephemeral}}
        if kind == 4:
            message = self.message(0, self.bot_user, data)
            answer["interaction"]["response_message_id"] = message["id"]
            answer["resource"] = {"type": 4, "message": message}
        return answer

    def followup(self, call: Call, ids: list[int]):
        body = call.json or {}
        if call.method == "POST":
            return 200, self.message(0, self.bot_user, body, webhook_id=str(APP_ID))
        return 200, self.message(0, self.bot_user, body, webhook_id=str(APP_ID))

    # --- what the bot did -------------------------------------------------------------

    def sent(self, route: str | None = None, method: str = "POST") -> list[Call]:
        """Calls that send messages (bot messages, webhook messages, interaction answers, followups)."""
        sends = {"/channels/{id}/messages", "/webhooks/{id}/{token}", "/interactions/{id}/{token}/callback"}
        return [c for c in self.calls if c.method == method and (c.route == route if route else c.route in sends)]

    def webhook_sends(self) -> list[Call]:
        return [c for c in self.sent("/webhooks/{id}/{token}") if int(c.path.split("/")[2]) != APP_ID]

    def bot_messages(self, channel_id: int | None = None) -> list[Call]:
        return [c for c in self.sent("/channels/{id}/messages")
                if channel_id is None or c.path == f"/channels/{channel_id}/messages"]

    def interaction_answers(self) -> list[str]:
        """Text of every interaction response and followup, in order."""
        texts = []
        for call in self.calls:
            if call.route == "/interactions/{id}/{token}/callback" and call.json.get("type") == 4:
                data = call.json["data"]
                texts.append(data.get("content") or json.dumps(data.get("embeds")))
            elif call.method == "POST" and call.route == "/webhooks/{id}/{token}" and \
                    int(call.path.split("/")[2]) == APP_ID:
                texts.append(call.json.get("content") or json.dumps(call.json.get("embeds")))
        return texts


def _body(json_payload=None, form=None, multipart=None):
    """The JSON of a request, whether sent as JSON or as multipart with payload_json; and file names."""
    parts = form or multipart or []
    files = [p.get("filename") for p in parts if p.get("filename")]
    for part in parts:
        if part.get("name") == "payload_json":
            return json.loads(part["value"]), files
    return json_payload, files


def _raise_for(status: int, data):
    response = SimpleNamespace(status=status, reason={403: "Forbidden", 404: "Not Found"}.get(status, "Error"))
    if status == 403:
        raise discord.Forbidden(response, data)
    if status == 404:
        raise discord.NotFound(response, data)
    raise discord.HTTPException(response, data)


@contextlib.contextmanager
def captured_http(fake: FakeDiscord):
    """Route discord.py's REST layer (bot HTTP client and webhook adapter) to the fake server."""

    async def http_request(self, route: Route, *, files=None, form=None, **kwargs):
        body, names = _body(kwargs.get("json"), form=form)
        call = Call(route.method, route.url[len(Route.BASE):], dict(kwargs.get("params") or {}), body, names)
        status, data = fake.handle(call)
        if status >= 400:
            _raise_for(status, data)
        return data

    async def webhook_request(self, route: Route, session=None, *, payload=None, multipart=None, files=None,
                              params=None, **kwargs):
        body, names = _body(payload, multipart=multipart)
        call = Call(route.method, route.url[len(Route.BASE):], dict(params or {}), body, names)
        status, data = fake.handle(call)
        if status >= 400:
            _raise_for(status, data)
        return data

    async def get_from_cdn(self, url: str) -> bytes:
        fake.calls.append(Call("GET", url, {}, None))
        if url not in fake.files:
            _raise_for(404, {"message": "Not Found", "code": 0})
        return fake.files[url]

    with mock.patch.object(HTTPClient, "request", http_request), \
            mock.patch.object(HTTPClient, "get_from_cdn", get_from_cdn), \
            mock.patch.object(AsyncWebhookAdapter, "request", webhook_request):
        yield


class Harness:
    """A logged-in bot in a guild with users; send it gateway events and read what it did."""

    def __init__(self, bot, fake: FakeDiscord):
        self.bot, self.fake = bot, fake
        self.state = bot._connection
        self.users = {
            "alice": user_payload(1000000000000000011, "Alice"),
            "bob": user_payload(1000000000000000012, "Bob"),
            "mod": user_payload(1000000000000000013, "Mod"),
            "otherbot": user_payload(1000000000000000014, "OtherBot", bot=True),
        }
        self.roles = {"alice": [], "bob": [], "mod": [MOD_ROLE], "otherbot": []}

    def member(self, name: str, with_user: bool = True) -> dict:
        member = {"roles": [str(r) for r in self.roles[name]], "joined_at": iso(), "deaf": False, "mute": False,
                  "flags": 0, "nick": None, "avatar": None}
        if with_user:
            member["user"] = self.users[name]
        return member

    async def connect(self) -> None:
        """READY then GUILD_CREATE, as the gateway sends them after IDENTIFY."""
        self.state.parse_ready({
            "v": 10, "user": self.fake.bot_user, "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "session_id": "session", "resume_gateway_url": "wss://gateway.invalid",
            "application": {"id": str(APP_ID), "flags": 0}, "private_channels": [], "relationships": [],
        })
        bot_member = {"user": self.fake.bot_user, "roles": [str(BOT_ROLE)], "joined_at": iso(), "deaf": False,
                      "mute": False, "flags": 0}
        self.state.parse_guild_create({
            "id": str(GUILD_ID), "name": "Test Server", "owner_id": "1", "member_count": 5, "large": False,
            "unavailable": False, "features": [], "emojis": [], "stickers": [], "presences": [],
            "voice_states": [], "threads": list(self.fake.threads.values()), "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [], "joined_at": iso(), "verification_level": 0, "afk_timeout": 300,
            "preferred_locale": "en-US", "premium_tier": 0, "nsfw_level": 0, "mfa_level": 0,
            "explicit_content_filter": 0, "default_message_notifications": 0, "system_channel_flags": 0,
            "roles": [
                {"id": str(EVERYONE_ROLE), "name": "@everyone", "permissions": str(EVERYONE_PERMS.value),
                 "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0},
                {"id": str(BOT_ROLE), "name": "Personae", "permissions": str(BOT_PERMS.value), "position": 1,
                 "color": 0, "hoist": False, "managed": True, "mentionable": False, "flags": 0,
                 "tags": {"bot_id": str(BOT_ID)}},
                {"id": str(MOD_ROLE), "name": "Moderators", "permissions": str(MOD_PERMS.value), "position": 2,
                 "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0},
            ],
            "channels": list(self.fake.channels.values()),
            "members": [bot_member] + [self.member(n) for n in ("alice", "bob", "mod")],
        })
        await self.settle()

    async def settle(self, timeout: float = 120) -> None:
        """Wait until every task the events started (handlers, commands, replies) has finished."""
        me = asyncio.current_task()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for _ in range(3):
                await asyncio.sleep(0)
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not pending:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"tasks still running: {pending}")
            await asyncio.wait(pending, timeout=remaining)

    # --- gateway events ------------------------------------------------------------------

    def attachment(self, filename: str, data: bytes, content_type: str | None = None,
                   size: int | None = None) -> dict:
        """An attachment payload whose bytes the fake CDN serves (`size`: what Discord announces)."""
        attachment_id = self.fake.snowflake()
        url = f"https://cdn.discordapp.com/attachments/{CHANNEL_ID}/{attachment_id}/{filename}"
        self.fake.files[url] = data
        payload = {"id": str(attachment_id), "filename": filename, "size": len(data) if size is None else size,
                   "url": url, "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net")}
        if content_type:
            payload["content_type"] = content_type
        return payload

    async def message(self, content: str, author: str = "alice", channel_id: int = CHANNEL_ID,
                      reply_to: dict | None = None, webhook_id: str | None = None, mentions=(),
                      attachments=(), wait: bool = True) -> dict:
        """MESSAGE_CREATE from a user (or a webhook); returns the payload (wait=False: before it is handled)."""
        guild = channel_id != DM_CHANNEL_ID
        payload = {
            "id": str(self.fake.snowflake()), "channel_id": str(channel_id), "author": self.users[author],
            "content": content, "timestamp": iso(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [self.users[m] if isinstance(m, str) else m for m in mentions],
            "mention_roles": [], "attachments": list(attachments), "embeds": [], "pinned": False, "type": 0,
            "flags": 0, "components": [],
        }
        if guild:
            payload["guild_id"] = str(GUILD_ID)
            payload["member"] = self.member(author, with_user=False)
        if webhook_id:
            payload["webhook_id"] = webhook_id
            payload["author"] = {"id": webhook_id, "username": "Some Hook", "avatar": None,
                                 "discriminator": "0000", "bot": True}
            payload.pop("member", None)
        if reply_to is not None:
            payload["type"] = 19
            payload["message_reference"] = {"type": 0, "message_id": reply_to["id"],
                                            "channel_id": reply_to["channel_id"], "guild_id": str(GUILD_ID)}
            # Discord resolves one level: the replied-to message comes without its own referenced_message.
            payload["referenced_message"] = {k: v for k, v in reply_to.items() if k != "referenced_message"}
        if not guild:
            self.fake.dm_channel["recipients"] = [self.users[author]]
            self.state._add_private_channel(discord.DMChannel(me=self.bot.user, state=self.state,
                                                              data=self.fake.dm_channel))
        self.fake.user_messages[int(payload["id"])] = {k: v for k, v in payload.items() if k != "member"}
        self.state.parse_message_create(payload)
        if wait:
            await self.settle()
        return payload

    async def react(self, message_id: str | int, emoji: str, user: str = "alice", remove: bool = False) -> None:
        """MESSAGE_REACTION_ADD (or _REMOVE) on a message in #general."""
        payload = {"user_id": self.users[user]["id"], "channel_id": str(CHANNEL_ID), "message_id": str(message_id),
                   "guild_id": str(GUILD_ID), "emoji": {"id": None, "name": emoji}, "burst": False, "type": 0}
        if remove:
            self.state.parse_message_reaction_remove(payload)
        else:
            payload["member"] = self.member(user)
            payload["message_author_id"] = str(BOT_ID)
            self.state.parse_message_reaction_add(payload)
        await self.settle()

    async def click(self, message_id: str | int, custom_id: str, user: str = "alice", wait: bool = True) -> dict:
        """INTERACTION_CREATE for a button (custom_id) on a message the fake server holds."""
        message = self.fake.messages[int(message_id)]
        channel_id = int(message["channel_id"])
        member = self.member(user)
        permissions = EVERYONE_PERMS.value | (MOD_PERMS.value if MOD_ROLE in self.roles[user] else 0)
        member["permissions"] = str(permissions)
        payload = {
            "id": str(self.fake.snowflake()), "application_id": str(APP_ID), "type": 3,
            "data": {"custom_id": custom_id, "component_type": 2}, "message": message,
            "channel_id": str(channel_id), "token": f"interaction-token-{self.fake.snowflake()}", "version": 1,
            "locale": "en-US", "attachment_size_limit": 8388608, "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)}, "context": 0,
            "app_permissions": str(BOT_PERMS.value), "guild_id": str(GUILD_ID), "guild_locale": "en-US",
            "member": member, "channel": {**({**self.fake.channels, **self.fake.threads}[channel_id])},
        }
        self.state.parse_interaction_create(payload)
        if wait:
            await self.settle()
        return payload

    async def command(self, command: str, subcommand: str | None = None, /, user: str = "alice",
                      channel_id: int = CHANNEL_ID, wait: bool = True, **options) -> dict:
        """INTERACTION_CREATE for a slash command (optionally a subcommand) with string or integer options."""
        opts = [{"name": key, "type": 4 if isinstance(value, int) else 3, "value": value}
                for key, value in options.items()]
        if subcommand:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        guild = channel_id != DM_CHANNEL_ID
        payload = {
            "id": str(self.fake.snowflake()), "application_id": str(APP_ID), "type": 2,
            "data": {"id": str(self.fake.snowflake()), "name": command, "type": 1, "options": opts},
            "channel_id": str(channel_id), "token": f"interaction-token-{self.fake.snowflake()}", "version": 1,
            "locale": "en-US", "attachment_size_limit": 8388608, "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)} if guild else {"1": self.users[user]["id"]},
            "context": 0 if guild else 1, "app_permissions": str(BOT_PERMS.value),
        }
        if guild:
            member = self.member(user)
            permissions = EVERYONE_PERMS.value | (MOD_PERMS.value if MOD_ROLE in self.roles[user] else 0)
            member["permissions"] = str(permissions)
            payload.update(guild_id=str(GUILD_ID), guild_locale="en-US", member=member,
                           channel={**({**self.fake.channels, **self.fake.threads}[channel_id])})
            payload["data"]["guild_id"] = str(GUILD_ID)
        else:
            payload.update(user=self.users[user], channel={**self.fake.dm_channel,
                                                            "recipients": [self.users[user]]})
        self.state.parse_interaction_create(payload)
        if wait:
            await self.settle()
        return payload


@contextlib.asynccontextmanager
async def running_bot(engine, table: dict | None = None, fake: FakeDiscord | None = None):
    """A logged-in PersonaeBot connected to the (given or a new) fake server; yields the Harness."""
    from plugins.discord.bot import PersonaeBot
    from plugins.discord.config import parse_config

    config, problems = parse_config({"sync_commands": True, **(table or {})})
    assert not problems, problems
    fake = fake or FakeDiscord()
    with captured_http(fake):
        bot = PersonaeBot(engine, config)
        bot._connection.guild_ready_timeout = 0.01
        harness = Harness(bot, fake)
        await bot.login(TOKEN)
        await harness.connect()
        try:
            yield harness
        finally:
            await bot.close()
            await harness.settle(10)
        assert not fake.unanswered, f"requests the fake Discord could not answer: {fake.unanswered}"
