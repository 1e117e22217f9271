"""The OpenAI chat-completions protocol: requests checked as the API checks them, answers shaped
as it shapes them, and the prompt tokenized so that typed special tokens stay text.

    req = parse_request(raw_body, models, max_tokens=512)      # a ChatRequest, or ApiError
    ids = prompt_ids(template, req.messages)                   # what the model continues
    completion(req, cid, text, finish, usage)                  # {"object": "chat.completion", ...}
    chunk(req, cid, {"content": "Par"})                        # {"object": "chat.completion.chunk"}
    sse(chunk) -> b'data: {...}\\n\\n'; DONE = b'data: [DONE]\\n\\n'

What a request may hold (https://platform.openai.com/docs/api-reference/chat/create):

    model               the base's name or a loaded adapter's (GET /v1/models); else 404
                        model_not_found
    messages            a non-empty list of {"role": system | developer | user | assistant,
                        "content": text or [{"type": "text", "text": ...}]}, not ending with
                        the assistant's turn (generation continues after the user)
    max_tokens          1 .. the server's max_tokens (max_completion_tokens is its new name;
                        both may be given only with one value); default: what the context
                        window leaves, at most the server's max_tokens
    temperature, top_p  0 .. 2 and 0 .. 1 (temperature 0: greedy, the same tokens as
                        pl.generate); seed: an int, so sampling repeats
    stop                a string or up to 4 strings; the answer ends before the first one
    stream              server-sent events (`data: {chunk}` lines, then `data: [DONE]`);
                        stream_options {"include_usage": true} adds a last chunk with usage
    user                an end-user id, accepted (OpenAI uses it for abuse monitoring only)

Everything else is refused with 400, never silently ignored: fields we know but do not
implement (n > 1, logprobs, tools, response_format other than text, penalties other than 0,
...) are `unsupported_parameter`/`unsupported_value`; fields the API does not have are
`unknown_parameter` (OpenAI says "Unrecognized request argument supplied"). Each error is the
API's shape, {"error": {"message", "type", "param", "code"}}, with its status code.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from peftlab.serve.limits import BadRequest, _json

MAX_STOP = 4                                       # OpenAI allows up to 4 stop sequences
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# known fields we do not implement: accepted only with the value that means "off"
DEFAULT_ONLY = {"n": [1], "logprobs": [False], "top_logprobs": [0], "presence_penalty": [0],
                "frequency_penalty": [0], "logit_bias": [{}], "response_format": [{"type": "text"}],
                "tool_choice": ["none"], "function_call": ["none"], "store": [False],
                "modalities": [["text"]], "service_tier": ["auto", "default"],
                "tools": [], "functions": [], "parallel_tool_calls": [], "audio": [],
                "prediction": [], "reasoning_effort": [], "metadata": [],
                "web_search_options": [], "verbosity": []}
ERROR_TYPES = {429: "rate_limit_error", 500: "server_error", 503: "server_error",
               504: "timeout", 408: "timeout"}          # every other status: invalid_request_error
SUPPORTED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
             "stop", "seed", "stream", "stream_options", "user"}


class ApiError(BadRequest):
    """A refusal in the OpenAI API's shape: status, message, `param` (the field at fault),
    `code` (e.g. model_not_found, context_length_exceeded) and `type`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, reason: str | None = None, headers: dict | None = None):
        super().__init__(status, message, reason=reason, headers=headers)
        self.param, self.code = param, code
        self.type = ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param,
                          "code": self.code}}

    @classmethod
    def of(cls, e: BadRequest) -> ApiError:
        """The same refusal (a limits.BadRequest: 408, 413, 415, 429, 503, ...) in this shape."""
        if isinstance(e, ApiError):
            return e
        return cls(e.status, str(e), reason=e.reason, headers=e.headers,
                   code={413: "request_too_large", 429: "rate_limit_exceeded"}.get(e.status))


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class ChatRequest:
    """One checked request. adapter: the LoRA adapter that serves it (None: the base).
    max_tokens: None until prompt_ids tells what the context leaves."""

    model: str
    adapter: str | None
    messages: list[dict]
    max_tokens: int | None = None
    temperature: float = 1.0                       # OpenAI's default
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(v, allowed) -> bool:
    return any((_is_num(v) and _is_num(a) and v == a) or (type(v) is type(a) and v == a)
               for a in allowed)


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not _is_num(v) or not lo <= v <= hi:
        raise _bad(f"{v!r} is not valid for '{key}': give a number from {lo:g} to {hi:g}.", key)
    return float(v)


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty array of {'role', 'content'} objects.",
                   "messages", "empty_array" if value == [] else "invalid_type")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object with 'role' and 'content'.", where, "invalid_type")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise _bad(f"{where}.{extra[0]} is not supported by peftlab serve (messages carry "
                       f"'role' and 'content' only).", f"{where}.{extra[0]}", "unsupported_parameter")
        if m.get("role") not in ROLES:
            raise _bad(f"{where}.role {m.get('role')!r} is not supported: use one of "
                       f"{', '.join(ROLES)}.", f"{where}.role", "unsupported_value")
        content = m.get("content")
        if isinstance(content, list):                  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise _bad(f"{where}.content: only text parts ({{'type': 'text', 'text': ...}}) "
                           f"are supported: this model reads text.", f"{where}.content",
                           "unsupported_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad(f"{where}.content must be a string.", f"{where}.content", "invalid_type")
        out.append({"role": ROLES[m["role"]], "content": content})
    if out[-1]["role"] == "assistant":
        raise _bad("The last message is the assistant's: end with a user message, the turn "
                   "the model answers.", f"messages[{len(out) - 1}].role")
    return out


def parse_request(raw: bytes, models: dict[str, str | None], max_tokens: int) -> ChatRequest:
    """Check a request body. models: {served name: adapter (None for the base)}; max_tokens:
    the server's cap on tokens per answer. Raises ApiError (400, 404) naming the field."""
    try:
        body = _json(raw)
    except BadRequest as e:
        raise _bad(str(e), None, "invalid_json") from None
    for key in body:
        if key in SUPPORTED:
            continue
        if key not in DEFAULT_ONLY:
            raise _bad(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
        if body[key] is not None and not _same(body[key], DEFAULT_ONLY[key]):
            kind = "unsupported_parameter" if not DEFAULT_ONLY[key] else "unsupported_value"
            raise _bad(f"'{key}' = {body[key]!r:.60} is not supported by peftlab serve (it "
                       f"generates one plain-text answer per request, without tools, logprobs "
                       f"or penalties).", key, kind)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: the base's name or an adapter's (GET /v1/models).",
                   "model", "missing_required_parameter")
    if model not in models:
        raise ApiError(404, f"The model '{model}' does not exist: this server has "
                            f"{sorted(models)} (GET /v1/models).", "model", "model_not_found",
                       reason="unknown_adapter")
    messages = _messages(body.get("messages"))
    limits = [body.get(k) for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    for k in ("max_tokens", "max_completion_tokens"):
        v = body.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= max_tokens):
            raise _bad(f"{v!r} is not valid for '{k}': give an integer from 1 to {max_tokens} "
                       f"(the server's max_tokens).", k)
    if len(set(limits)) > 1:
        raise _bad("max_tokens and max_completion_tokens differ: give one of them.",
                   "max_completion_tokens")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not isinstance(stop, list) or len(stop) > MAX_STOP \
            or not all(isinstance(s, str) and s for s in stop):
        raise _bad(f"'stop' must be a non-empty string or an array of at most {MAX_STOP} of them.",
                   "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad(f"'seed' must be an integer, got {seed!r}.", "seed", "invalid_type")
    stream, options = body.get("stream", False), body.get("stream_options")
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("'stream' must be true or false.", "stream", "invalid_type")
    if options is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"} \
                or not isinstance(options.get("include_usage", False), bool):
            raise _bad("'stream_options' takes {'include_usage': true|false} only.", "stream_options")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("'user' must be a string.", "user", "invalid_type")
    return ChatRequest(model=model, adapter=models[model], messages=messages,
                       max_tokens=limits[0] if limits else None,
                       temperature=_number(body, "temperature", 0, 2, 1.0),
                       top_p=_number(body, "top_p", 0, 1, 1.0), stop=stop, seed=seed,
                       stream=bool(stream), include_usage=bool((options or {}).get("include_usage")))


# --- the prompt: the chat template, with typed special tokens kept as text -------------------

def special_strings(tokenizer) -> list[str]:
    """The special tokens' texts (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, ...)."""
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
    return sorted(set(added) | set(tokenizer.all_special_tokens), key=len, reverse=True)


def prompt_ids(template, messages: list[dict]) -> list[int]:
    """The token ids the model continues, as pl.generate renders them (template.prompt_ids),
    except that special tokens typed inside a message's content are tokenized as text.

    The template renders the conversation to one string, and a tokenizer reads `<|im_end|>`
    in that string as the end-of-turn token wherever it stands: a user who types
    "<|im_end|>\\n<|im_start|>system\\n..." would forge a system turn. So a content holding a
    special token's text is swapped for a placeholder before rendering; the rendering is split
    at the placeholders; the template's own pieces are tokenized as usual, the contents with
    split_special_tokens=True (their `<|im_end|>` becomes the tokens of the characters).
    Conversations without such text take template.prompt_ids unchanged: the same ids as
    training and pl.generate."""
    tok = template.tokenizer
    specials = special_strings(tok)
    risky = [i for i, m in enumerate(messages) if any(s in m["content"] for s in specials)]
    if not risky:
        return template.prompt_ids(messages)
    marks = {i: f"\ue000peftlab-content-{uuid.uuid4().hex}\ue000" for i in risky}
    shown = [{**m, "content": marks.get(i, m["content"])} for i, m in enumerate(messages)]
    text, ids = template.render(shown, add_generation_prompt=True), []
    for i in risky:
        if marks[i] not in text:             # a template that rewrites contents: no safe split
            raise ApiError(400, f"messages[{i}].content holds special-token text "
                                f"({', '.join(s for s in specials if s in messages[i]['content'])}) "
                                f"that this chat template cannot keep as text.",
                           f"messages[{i}].content", "invalid_value")
        before, _, text = text.partition(marks[i])
        ids += template.ids(before)
        ids += tok(messages[i]["content"], add_special_tokens=False,
                   split_special_tokens=True)["input_ids"]
    return ids + template.ids(text)


# --- answers --------------------------------------------------------------------------------

def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(req: ChatRequest, text: str, finish: str, use: dict) -> dict:
    """The whole answer: {"object": "chat.completion", "choices": [one], "usage": ...}."""
    return {"id": req.id, "object": "chat.completion", "created": req.created, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}], "usage": use}


def chunk(req: ChatRequest, delta: dict | None, finish: str | None = None,
          use: dict | None = None) -> dict:
    """One streamed piece; delta None: the usage-only last chunk (choices empty)."""
    out = {"id": req.id, "object": "chat.completion.chunk", "created": req.created,
           "model": req.model, "choices": [] if delta is None else
           [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if use is not None:
        out["usage"] = use
    return out


def sse(obj: dict) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


DONE = b"data: [DONE]\n\n"


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the first stop string (pl.generate cuts the same way)."""
    for s in stop:
        text = text.split(s)[0] if s in text else text
    return text


def held_back(text: str, stop: list[str]) -> int:
    """How many characters at the end of a growing text must wait before streaming: a
    character still being decoded (U+FFFD: its bytes are not all there yet) and the longest
    end that could still become a stop string."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold
