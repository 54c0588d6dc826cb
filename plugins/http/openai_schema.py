"""The request bodies the API accepts, as pydantic models (OpenAI's names; extra fields ignored)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions (and /v1/regenerate, where messages may be empty)."""

    # SillyTavern, Open WebUI and others send many fields of their own; unknown ones are ignored.
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(default_factory=list)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="0 <= seed < 2**63")
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request is supported")
    user: str | None = Field(default=None, max_length=256)
    repetition_penalty: float | None = Field(default=None, gt=0, le=3)  # a common extension

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s] or None

    def sampling(self) -> dict:
        """Per-request overrides for the engine (None = the character's or the config's value)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "stop": self.stop,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
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
