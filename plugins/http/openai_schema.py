"""The request bodies the API accepts, as pydantic models (OpenAI's names; extra fields ignored)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plugins.http.tools import ToolPlan, ToolProblem, plan_of
from runtime.generation.structured import BadResponseFormat, check_schema, schema_of


class ContentPart(BaseModel):
    """One part of a multi-part message (only text parts are read)."""

    model_config = ConfigDict(extra="allow")
    type: str = "text"
    text: str | None = None


class ChatMessage(BaseModel):
    """One message of the conversation a client sends."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None

    def text(self) -> str:
        """The message's text (text parts joined; images and the like skipped)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    """OpenAI's stream_options."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


LOGIT_BIAS_LIMIT = 1024  # OpenAI's own limit is 300; a few more cost nothing here
SEED_LIMIT = 2**63  # the generator's torch.Generator takes 0 <= seed < 2**63

# Fields real clients send that change nothing here when neutral: (field, is it neutral?, what to send instead).
UNSUPPORTED = (
    ("functions", lambda v: not v, "the old functions field is not supported; send tools and tool_choice"),
    ("function_call", lambda v: v in (None, "none"), "the old function_call field is not supported; send tool_choice"),
    ("modalities", lambda v: not v or list(v) == ["text"], "only the text modality is supported"),
    ("audio", lambda v: not v, "audio output is not supported; leave it out"),
    ("prediction", lambda v: not v, "predicted outputs are not supported; leave prediction out"),
    ("web_search_options", lambda v: not v, "web search is not supported; leave web_search_options out"),
    ("best_of", lambda v: v in (None, 1), "best_of is not supported; use n for several choices"),
)


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions (and /v1/regenerate, where messages may be empty)."""

    # SillyTavern, Open WebUI and others send many fields of their own; unknown ones are ignored
    # unless they would change the reply (UNSUPPORTED: a 400 naming them).
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(default_factory=list)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, description="0 or -1: off")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT, description="0 <= seed < 2**63")
    n: int = Field(default=1, ge=1, le=128)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = Field(default=None, max_length=256)
    repetition_penalty: float | None = Field(default=None, gt=0, le=3)  # a common extension
    min_p: float | None = Field(default=None, ge=0, le=1, description="0: off")  # vLLM's and llama.cpp's extension
    logit_bias: dict[str, float] | None = Field(default=None, description="token id -> bias in [-100, 100]")
    response_format: dict | None = Field(default=None, description="text, json_object or json_schema")

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        if not value:
            return None
        if len(value) > LOGIT_BIAS_LIMIT:
            raise ValueError(f"at most {LOGIT_BIAS_LIMIT} logit_bias entries")
        for token, bias in value.items():
            if not token.isdigit():
                raise ValueError(f"logit_bias keys are token ids (whole numbers as strings), not {token[:40]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias of token {token} is {bias}; biases go from -100 to 100")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s] or None

    def problem(self) -> tuple[str, str] | None:
        """(field, message) of the first thing asked for that this server cannot do, else None."""
        extra = self.model_extra or {}
        for name, neutral, message in UNSUPPORTED:
            if name in extra and not neutral(extra[name]):
                return name, message
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed when stream is true"
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        try:
            check_schema(schema_of(self.response_format))
        except BadResponseFormat as error:
            return "response_format", str(error)
        try:
            plan = self.tool_plan()
        except ToolProblem as error:
            return error.param, str(error)
        if plan is not None:
            if schema_of(self.response_format) is not None:
                return "response_format", "response_format and a forced tool call both shape the reply; send one"
            try:
                check_schema(plan.schema)
            except BadResponseFormat as error:
                return "tools", str(error).replace("response_format's JSON schema", "a function's parameters")
        return None

    def tool_plan(self) -> ToolPlan | None:
        """The function call tools / tool_choice force (None: a plain reply)."""
        return plan_of(self.model_extra or {})

    @property
    def max_new_tokens(self) -> int | None:
        """max_completion_tokens (OpenAI's current name), else max_tokens (the older one)."""
        return self.max_completion_tokens or self.max_tokens

    def sampling(self) -> dict:
        """Per-request overrides for the engine (None = the character's or the config's value)."""
        plan = self.tool_plan()
        response_format = plan.response_format() if plan else self.response_format
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "max_new_tokens": self.max_new_tokens,
            "stop": self.stop,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "min_p": self.min_p,
            "logprobs": (self.top_logprobs or 0) if self.logprobs else None,
            "logit_bias": {int(token): bias for token, bias in self.logit_bias.items()} if self.logit_bias else None,
            "response_format": response_format if schema_of(response_format) is not None else None,
            # JSON is not prose: the degeneration guard's loop and word-list checks would cut it short.
            **({"guard": False} if schema_of(response_format) is not None else {}),
        }


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: thumbs up (1) or down (-1) on a logged reply; 0 takes it back."""

    model_config = ConfigDict(extra="ignore")
    message_id: Union[int, str]
    value: Literal[1, -1, 0]
    user: str | None = Field(default=None, max_length=256)

    @field_validator("message_id")
    @classmethod
    def _message_id(cls, value):
        # Accept the response's id ("chatcmpl-42") as well as personae_message_id (42).
        if isinstance(value, str):
            digits = value.removeprefix("chatcmpl-")
            if not digits.isdigit():
                raise ValueError("message_id must be personae_message_id (a number) or 'chatcmpl-NUMBER'")
            value = int(digits.lstrip("0")[:20] or "0")  # longer than 20 digits is out of range anyway
        if not 1 <= value < 2**63:
            raise ValueError("message_id must be between 1 and 2**63 - 1 (a personae_message_id)")
        return value
