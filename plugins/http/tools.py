"""OpenAI function calling, forced: tool_choice "required" or a named function, generated as schema-bound JSON.

The reply is constrained by the same JSON-schema path as response_format (runtime.generation.structured), so a
call always parses and its arguments follow the function's parameters. tool_choice "auto" (the model deciding
whether to call a tool) is refused: a character model has no trained tool-call format to decide with.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from runtime.errors import PersonaeError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
NO_PARAMETERS = {"type": "object", "properties": {}}
MAX_TOOLS = 128  # OpenAI's own limit
AUTO = ("tool_choice \"auto\" (the default when tools are sent) is not supported: a character model cannot "
        "decide on its own whether to call a function; send tool_choice \"required\", "
        "{\"type\": \"function\", \"function\": {\"name\": ...}} or \"none\"")


class ToolProblem(PersonaeError, ValueError):
    """A tools / tool_choice request this server cannot follow: (field, message)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class ToolPlan:
    """A forced call: which functions may be called, the JSON schema the reply follows, the prompt's instruction."""

    functions: dict[str, dict]  # name -> {"description", "parameters"}
    named: str | None  # tool_choice named this function; else ("required") any of `functions`

    @property
    def schema(self) -> dict:
        """Named: the function's parameters (the reply is its arguments); required: {"name", "arguments"}."""
        if self.named:
            return self.functions[self.named]["parameters"]
        options = [{"type": "object", "properties": {"name": {"const": name}, "arguments": spec["parameters"]},
                    "required": ["name", "arguments"]} for name, spec in self.functions.items()]
        return options[0] if len(options) == 1 else {"anyOf": options}

    def response_format(self) -> dict:
        return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": self.schema}}

    def instruction(self) -> str:
        """What the model is told, added to the character's instructions (it sees the functions it may call)."""
        def described(name):
            spec = self.functions[name]
            about = f" ({spec['description']})" if spec["description"] else ""
            return f"{name}{about}, arguments: {json.dumps(spec['parameters'], ensure_ascii=False)}"

        if self.named:
            return (f"Now call the function {described(self.named)}. Reply with nothing but its arguments as one "
                    "JSON object.")
        listed = "\n".join(f"- {described(name)}" for name in self.functions)
        return ("Now call one of these functions:\n" + listed + "\nReply with nothing but one JSON object: "
                "{\"name\": the function's name, \"arguments\": its arguments}.")

    def call(self, text: str) -> tuple[str, str]:
        """(function name, arguments as a JSON string) of a generated reply; a cut-short one as far as it got."""
        if self.named:
            return self.named, text
        try:
            parsed = json.loads(text)
            return parsed["name"], json.dumps(parsed["arguments"], ensure_ascii=False)
        except (ValueError, KeyError, TypeError):  # cut short by max_tokens: keep what can be read
            found = re.search(r'"name"\s*:\s*"([^"]*)"', text)
            name = found.group(1) if found else (next(iter(self.functions)) if len(self.functions) == 1 else "")
            rest = re.search(r'"arguments"\s*:\s*(.*)$', text, re.S)
            return name, rest.group(1) if rest else ""


def call_id() -> str:
    """An id for one tool call, in OpenAI's style."""
    return f"call_{secrets.token_hex(12)}"


def plan_of(extra: dict) -> ToolPlan | None:
    """The forced call a request asks for (None: a plain reply); a ToolProblem names what cannot be followed."""
    tools, choice = extra.get("tools"), extra.get("tool_choice")
    if choice == "none" or (not tools and choice is None):
        return None  # the model may not call a tool: a plain reply, as OpenAI does
    if not tools:
        raise ToolProblem("tool_choice", "tool_choice needs tools: send the functions in tools")
    functions = _functions(tools)
    if choice in (None, "auto"):
        raise ToolProblem("tool_choice", AUTO)
    if choice == "required":
        return ToolPlan(functions, None)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not isinstance(name, str) or name not in functions:
            raise ToolProblem("tool_choice", f"tool_choice names function {str(name)[:64]!r}, which is not in tools "
                                             f"({', '.join(functions)})")
        return ToolPlan(functions, name)
    raise ToolProblem("tool_choice", "tool_choice must be \"none\", \"required\" or "
                                     "{\"type\": \"function\", \"function\": {\"name\": ...}}")


def _functions(tools) -> dict[str, dict]:
    """tools as {name: {description, parameters}}; anything malformed is a ToolProblem naming `tools`."""
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise ToolProblem("tools", f"tools must be a list of at most {MAX_TOOLS} functions")
    functions = {}
    for number, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ToolProblem("tools", f"tools[{number}] must be {{\"type\": \"function\", \"function\": {{...}}}} "
                                       "(only function tools are supported)")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolProblem("tools", f"tools[{number}].function.name must be 1-64 letters, digits, _ or -")
        if name in functions:
            raise ToolProblem("tools", f"function {name!r} is in tools twice")
        parameters = function.get("parameters", NO_PARAMETERS)
        if not isinstance(parameters, dict):
            raise ToolProblem("tools", f"tools[{number}].function.parameters must be a JSON schema object")
        description = function.get("description") or ""
        functions[name] = {"description": str(description)[:1000], "parameters": parameters}
    return functions


def chat_of(messages) -> list[dict]:
    """The chat as role/content dicts: an assistant's tool calls written out, tool results as the user's turn.

    After a call the client sends the function's result (role "tool") and expects the character to go on:
    the result is the message the character answers, "Result of NAME: ...".
    """
    chat: list[dict] = []
    called: dict[str, str] = {}  # tool_call_id -> function name
    for message in messages:
        if message.role == "tool":
            name = called.get(str((message.model_extra or {}).get("tool_call_id")), message.name or "the function")
            text = f"Result of {name}: {message.text().strip()}"
            if chat and chat[-1]["role"] == "user" and chat[-1].get("tool_result"):
                chat[-1]["content"] += "\n" + text  # several results of one turn's calls: one message
            else:
                chat.append({"role": "user", "content": text, "tool_result": True})
        elif message.role in ("user", "assistant"):
            text = message.text()
            for call in _calls(message):
                called[str(call.get("id"))] = call["function"]["name"]
                text += ("\n" if text else "") + _written(call["function"])
            chat.append({"role": message.role, "content": text})
    return [{"role": m["role"], "content": m["content"]} for m in chat]


def _calls(message) -> list[dict]:
    """An assistant message's tool_calls that name a function (others are skipped)."""
    calls = (message.model_extra or {}).get("tool_calls") if message.role == "assistant" else None
    if not isinstance(calls, list):
        return []
    return [c for c in calls if isinstance(c, dict) and isinstance(c.get("function"), dict)
            and isinstance(c["function"].get("name"), str)]


def _written(function: dict) -> str:
    """A call as the model wrote it when it was forced to: {"name": ..., "arguments": {...}}."""
    arguments = function.get("arguments")
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        pass  # kept as the client sent it
    return json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)


class StreamedCall:
    """One choice's call as OpenAI streams it: the id and name first, then pieces of the arguments.

    A named call streams its arguments as they are made; with "required" the name is known only once the
    reply is whole (the model may write the arguments first), so that call comes in one piece at the end.
    """

    def __init__(self, plan: ToolPlan):
        self.plan, self.id, self.started = plan, call_id(), False

    def delta(self, text: str) -> dict | None:
        """The delta for a new piece of the reply (None: held back until the end)."""
        if not self.plan.named:
            return None
        return self._piece(self.plan.named, text)

    def rest(self, whole: str) -> dict | None:
        """The delta that completes the call once the reply is whole (None: everything was sent)."""
        if self.plan.named:
            return None if self.started else self._piece(self.plan.named, "")
        return self._piece(*self.plan.call(whole))

    def _piece(self, name: str, arguments: str) -> dict:
        call = {"index": 0, "function": {"arguments": arguments}}
        if not self.started:
            self.started = True
            call.update(id=self.id, type="function", function={"name": name, "arguments": arguments})
        return {"tool_calls": [call]}
