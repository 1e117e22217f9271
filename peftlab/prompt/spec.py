"""Prompt tuning declares itself (see peftlab/core/methodspec.py). Loaded without the method's code."""

from peftlab.core.methodspec import CompareEntry, MethodSpec, Option, TrainEntry

PROMPT_INIT_TEXT = "positive or negative"   # Lester et al.: class-label words start best


def describe(s: dict) -> str:
    """'prompt with 10 virtual tokens'"""
    return f"prompt with {s['virtual_tokens']} virtual tokens"


def build_train(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    from peftlab import prompt
    prompt.apply(model, prompt.PromptConfig(num_virtual_tokens=s["virtual_tokens"],
                                            seed=s["seed"]), tokenizer=tokenizer)


def build_compare(model, ctx) -> None:
    from peftlab import prompt
    prompt.apply(model, prompt.PromptConfig(num_virtual_tokens=10, init="text",
                                            init_text=PROMPT_INIT_TEXT),
                 tokenizer=ctx["tokenizer"])


CHAT_INIT_TEXT = "Extract the name, city and day"      # the task's instruction words


def build_chat(model, ctx) -> None:
    from peftlab import prompt
    prompt.apply(model, prompt.PromptConfig(num_virtual_tokens=10, init="text",
                                            init_text=CHAT_INIT_TEXT),
                 tokenizer=ctx["tokenizer"])


SPEC = MethodSpec(
    name="prompt", module="peftlab.prompt", config="PromptConfig", order=30,
    paper="Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning",
    hf_peft_type="PROMPT_TUNING", mergeable=False,
    cannot_merge="its virtual tokens are extra inputs joined to the sequence, not a weight "
                 "update",
    options=(Option("--virtual-tokens", "positive_int", 10,
                    "prefix / prompt length (default 10)"),),
    train=(TrainEntry("prompt", 3e-2, describe, build_train),),
    compare=(CompareEntry("prompt", "text", "10 soft prompt tokens (init: label words) + head",
                          3e-2, build_compare),
             CompareEntry("prompt", "chat", "10 soft prompt tokens (init: the instruction "
                                            "words)", 3e-2, build_chat)),
)
