"""The chat template, once, for training, generation and serving: text -> tokens -> loss mask.

    template = pl.chat.ChatTemplate(tokenizer)                 # the short default system prompt
    ids, supervised = template.encode(messages)                # what training sees
    ids = template.prompt_ids(messages[:-1])                   # what generation continues

An instruction model was trained on conversations rendered by its tokenizer's chat template
(SmolLM2: `<|im_start|>role\\ncontent<|im_end|>\\n` per message). Fine-tuning it must render
them the same way, and must learn only the answers: the prompt is given, not predicted.

Which tokens are the answer? Not "everything after the prompt's token ids" by searching for
ids (the pad token is `<|im_end|>`, the end-of-turn token, on SmolLM2: masking padding by id
would also mask every answer's end, and the model would never learn to stop). Instead, for each
assistant turn k we render two texts with the template,

    before = render(messages[:k], add_generation_prompt=True)   # ... <|im_start|>assistant\\n
    upto   = render(messages[:k+1])                             # ... answer<|im_end|>\\n

tokenize both and check that `before`'s tokens are a prefix of `upto`'s (a template that
renders the prompt differently inside the conversation would give wrong masks: refused). The
answer is upto's tokens after that prefix, up to and including the end-of-turn token (what
tells generation to stop); the newline the template adds after it is not supervised.

A system prompt: SmolLM2's template puts "You are a helpful AI assistant named SmolLM, trained
by Hugging Face" (20 tokens with its markers) before every conversation without one. We put
a short one instead (DEFAULT_SYSTEM, 10 tokens): 10 tokens saved per example, measured on the
real tokenizer in tests/test_chat_data.py. Shorter is not always better: measured on five
questions to the embedded model, "Answer briefly." (7 tokens) made it answer "What is the
capital of France?" with "La femme de France, ..." where this one and the default say "The
capital of France is Paris." A conversation's own system message is kept; system=None keeps
the template's default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = ("system", "user", "assistant")


class ChatDataError(ValueError):
    """A conversation or the tokenizer cannot be used for chat training; the message says
    which example and what to do."""


def as_messages(example, where: str = "example") -> list[dict]:
    """One conversation as a list of {"role", "content"} dicts, from a conversation (a list of
    messages), a {"messages": [...]} record, a {"prompt", "response"} record (optionally with
    "system"), or a plain string (one user message, for generation). Checked: known roles,
    string contents."""
    if isinstance(example, str):
        return [{"role": "user", "content": example}]
    if isinstance(example, Mapping):
        if "messages" in example:
            example = example["messages"]
        elif "prompt" in example:
            msgs = [{"role": "system", "content": example["system"]}] if example.get("system") \
                else []
            msgs.append({"role": "user", "content": example["prompt"]})
            if example.get("response") is not None:
                msgs.append({"role": "assistant", "content": example["response"]})
            example = msgs
        else:
            raise ChatDataError(f"{where}: a chat example needs a 'messages' list or 'prompt' "
                                f"(and 'response') fields; it has {sorted(example)}.")
    if not isinstance(example, Sequence) or isinstance(example, (str, bytes)) or not example:
        raise ChatDataError(f"{where}: a conversation is a non-empty list of messages "
                            f"{{'role': ..., 'content': ...}}; got {type(example).__name__}.")
    out = []
    for i, m in enumerate(example):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ChatDataError(f"{where}, message {i}: each message needs 'role' and 'content'; "
                                f"got {m!r:.80}.")
        if m["role"] not in ROLES:
            raise ChatDataError(f"{where}, message {i}: unknown role {m['role']!r}; use one of "
                                f"{', '.join(ROLES)}.")
        if not isinstance(m["content"], str):
            raise ChatDataError(f"{where}, message {i}: content must be text, got "
                                f"{type(m['content']).__name__}.")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class ChatTemplate:
    """A tokenizer's chat template with peftlab's choices: the system prompt and which
    assistant turns are supervised.

    tokenizer: a tokenizer with a chat template (tokenizer.chat_template). system: the system
    prompt put before conversations that have none (DEFAULT_SYSTEM; None: the template's own
    default). supervise: "all" assistant turns carry loss, or only the "last".
    """

    def __init__(self, tokenizer, system: str | None = DEFAULT_SYSTEM, supervise: str = "all"):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ChatDataError(
                f"The tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) "
                f"has no chat template (tokenizer.chat_template is None), so conversations cannot "
                f"be rendered as the model expects. Use an instruction model's tokenizer "
                f"(pl.models.chat_model()), or set tokenizer.chat_template to a Jinja template.")
        if supervise not in ("all", "last"):
            raise ValueError(f"supervise must be 'all' or 'last', got {supervise!r}")
        self.tokenizer, self.system, self.supervise = tokenizer, system, supervise
        eos = tokenizer.eos_token_id
        self.end_of_turn = eos if isinstance(eos, int) else None

    # --- text -------------------------------------------------------------------------------
    def with_system(self, messages: list[dict]) -> list[dict]:
        if self.system is None or (messages and messages[0]["role"] == "system"):
            return messages
        return [{"role": "system", "content": self.system}, *messages]

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(self.with_system(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- what generation and training see ----------------------------------------------------
    def prompt_ids(self, messages) -> list[int]:
        """Token ids of the conversation so far plus the assistant's opening: what the model
        continues. `messages`: anything as_messages takes (a string is one user message)."""
        msgs = as_messages(messages)
        if msgs[-1]["role"] == "assistant":
            raise ChatDataError("The conversation to continue ends with an assistant message; "
                                "generation continues after a user message.")
        return self.ids(self.render(msgs, add_generation_prompt=True))

    def encode(self, messages, where: str = "example") -> tuple[list[int], list[bool]]:
        """(ids, supervised) of one whole conversation: supervised[t] is True where token t is
        part of an answer the model must learn (its end-of-turn token included)."""
        msgs = as_messages(messages, where)
        turns = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
        if not turns:
            raise ChatDataError(f"{where}: the conversation has no assistant message, so there "
                                f"is no answer to learn; add the answer as the last message "
                                f"(role 'assistant') or a 'response' field.")
        if self.supervise == "last":
            turns = turns[-1:]
        ids = self.ids(self.render(msgs))
        supervised = [False] * len(ids)
        for k in turns:
            before = self.ids(self.render(msgs[:k], add_generation_prompt=True))
            upto = self.ids(self.render(msgs[:k + 1]))
            if upto[:len(before)] != before or ids[:len(upto)] != upto:
                raise ChatDataError(
                    f"{where}, message {k}: the chat template renders the prompt differently "
                    f"inside the whole conversation (its tokens are not a prefix), so the answer "
                    f"cannot be located safely. Use a template whose rendering of a "
                    f"conversation extends the rendering of its beginning.")
            end = len(upto)
            if self.end_of_turn in upto[len(before):]:   # stop after the end-of-turn token
                end = len(before) + upto[len(before):].index(self.end_of_turn) + 1
            for t in range(len(before), end):
                supervised[t] = True
        if not any(supervised):
            raise ChatDataError(f"{where}: no answer token to learn (the assistant turns render "
                                f"to nothing).")
        return ids, supervised
