"""The editor's hyperparameters: one dataclass, in three groups (the paper's, the measured deviations from it,
speed). Defaults are the reference implementation's (Huang et al., ICLR 2023) except the deviations."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


# Where the defaults deviate from the reference implementation, the reference's values (each deviation and what
# it moved: docs/RESULTS.md). bias_shift, value_gain and shift_guard are at the reference's by default but pinned
# too: the benchmark applies these over a model's pipeline settings (params.yaml), which change them.
REFERENCE_SETTINGS = {"activation": "ffn", "frames": False, "reword": False, "check_after": 100, "min_lr": 0.0,
                      "max_neurons_per_edit": 5, "phrasings": 0, "vocab_candidates": 0, "subject_layer": None,
                      "retry_without_decay": False, "bias_shift": 0.0, "shift_guard": None, "value_gain": 1.0}

# where each group of EditorConfig starts (`patcher config` prints them as headings)
GROUPS = {"lr": "the paper (Transformer-Patcher's settings)",
          "activation": "measured deviations from the paper (their reference values: REFERENCE_SETTINGS)",
          "memory_search": "speed (how fast, not what)"}


@dataclass
class EditorConfig:
    """Three groups: the paper's hyperparameters (at the reference's values), the measured deviations from it
    (REFERENCE_SETTINGS holds the reference's values), and how fast it runs (no effect on the patches beyond
    float rounding)."""

    # --- the paper: optimisation of one patch --------------------------------------------------------------
    lr: float = _f(1e-2, "Adam learning rate for the patch parameters")
    weight_decay: float = _f(0.01, "Adam weight decay")
    grad_clip: float = _f(5.0, "max gradient norm per step")
    plateau_factor: float = _f(0.5, "LR multiplier when the training loss plateaus")
    plateau_patience: int = _f(10, "steps without improvement before the LR is cut")
    max_steps: int = _f(2000, "step limit per edit; an edit not right by then has failed")
    check_every: int = _f(25, "steps between checks of success and the validation-memory loss")
    val_min_improvement: float = _f(1e-3, "once right, stop at the first check that does not improve the "
                                          "validation-memory loss by more than this")
    # the paper: L = l_e + alpha * l_a + beta * (l_m1 + l_m2)
    alpha: float = _f(1.0, "weight of the activation loss l_a")
    beta: float = _f(10.0, "weight of the memory loss l_m (reference: 5 for FEVER, 10 for zsRE; 0: no memory)")
    act_topk: int = _f(5, "l_a: mean of the top-k of exp(act_margin - a_edit)")
    act_margin: float = _f(0.0, "l_a margin")
    mem_topk: int = _f(1000, "l_m: top-k memory activations per neuron")
    m1: float = _f(3.0, "l_m1 margin: a_edit must exceed every a_mem by m1")
    m2: float = _f(-3.0, "l_m2 margin: every a_mem must stay below m2")
    entropy_weight: float = _f(0.1, "classification l_e: cross-entropy minus this times the output entropy")
    label_smoothing: float = _f(0.1, "generation l_e: label smoothing of the per-token NLL")
    value_scale_init: float = _f(10.0, "initial trainable scale of a new neuron's value vector")
    memory_size: int = _f(40000, "most FFN-input vectors kept from the memory set (sampled with the seed); edit "
                                 "inputs are always added on top")
    edit_copies: int = _f(8, "reference path: the edit input is fed this many times per step")
    reference_dropout: bool = _f(True, "reference path: dropout on while training")
    prompt_format: str = _f("text", "how an input is put to a generation model: 'text' (as is) or 'chat' (the "
                                    "tokenizer's chat template, the input as the user turn)")

    # --- measured deviations from the paper (the reference's values: REFERENCE_SETTINGS) ------------------------
    activation: str = _f("auto", "patch activation: 'knee' (ReLU up to 1, slope 0.1 beyond: no negative tail to "
                                 "leak into other inputs, weak firing acts almost fully), 'relu', 'ffn' (the FFN's "
                                 "own, which merges exactly into GELU FFNs: the reference), any transformers "
                                 "activation, or 'auto': an existing patch set's own, else 'knee'")
    phrasings: int = _f(7, "train each edit on up to this many of the record's `phrasings` too (never its "
                           "`rephrases`), the memory covering the same wordings of other facts: broader keys, "
                           "more generality (0: the input alone)")
    frames: bool = _f(True, "a record that brings no phrasings gets them, its subject and negatives from the frames "
                             "of the prompts the editor has seen (its memory set and earlier edits: engine/frames.py)")
    frame_negatives: int = _f(6, "frames: at most this many other questions about the subject join the memory as "
                                 "negatives when a record brings none")
    reword: bool = _f(True, "frames: a record whose frame was never seen in another wording gets rule rewordings of "
                            "English syntax (engine/rewording.py) that the unpatched model answers alike")
    subject_layer: int | None = _f(None, "decoder-only LMs: each neuron also reads this layer's FFN input as a "
                                         "running max over the prompt, so it fires on its subject in any wording; "
                                         "records' `negatives` (or the frames') keep the subject's other facts "
                                         "(None: off; fast path only; exports as a branch)")
    bias_shift: float = _f(0.0, "raise each trained neuron's bias by this, moving its threshold from the edge of its "
                                "training wordings into the gap the memory loss opened (0: off; a later wrong edit "
                                "takes the shift back where it alone makes a neuron fire)")
    shift_guard: float | None = _f(1.0, "the bias shift stops this far below the neuron's highest memory "
                                        "pre-activation: training does not always open a gap (None: full shift)")
    value_gain: float = _f(1.0, "multiply each trained neuron's value by this, with the bias shift (an unseen "
                                "wording that fires the neuron fully can still be wrong)")
    check_after: int = _f(25, "first step at which success and the validation loss are checked (reference: 100)")
    min_lr: float = _f(1e-3, "floor of the plateau schedule: without one a hard edit's LR decays to nothing "
                             "before it is right (reference: none)")
    max_neurons_per_edit: int = _f(32, "generation: at most this many neurons (wrong answer tokens) per edit; an "
                                       "edit with more fails untrained (reference: 5)")
    retry_without_decay: bool = _f(True, "an edit still wrong is trained once more without weight decay, which "
                                         "holds a long answer's values back (False: no retry)")
    vocab_candidates: int = _f(64, "generation: the edit loss on each position's top-k outputs and the targets "
                                   "(a set that only grows) instead of the whole vocabulary; success is judged on "
                                   "the whole vocabulary, and an edit that fails is retrained on all of it (0: off)")
    keep_failed: bool = _f(False, "keep the neurons of an edit that failed (the reference does, silently)")
    max_checks_right: int = _f(0, "stop at the N-th check at which the edit is right (0: when the validation loss "
                                  "stops improving); the no-memory ablation needs it: without l_m that loss falls "
                                  "for ever")

    # --- speed: how fast, not what ------------------------------------------------------------------------
    memory_search: str = _f("int8", "how each neuron's top memory rows are found on a CPU: 'int8' (a pass over an "
                                    "int8 copy, the rows it ranks highest scored exactly) or 'exact'")
    memory_full_pass_every: int = _f(10, "large memories: a whole pass every N steps after the first 25, in "
                                         "between only the prompts that held each neuron's top rows (1: every step)")
    output_grad: str = _f("int8", "the gradient through an LM's output layer on a CPU: 'int8' (through an int8 "
                                  "copy; forward, losses and checks stay exact) or 'exact'")
    threads: int = _f(0, "torch CPU threads; 0: 1 for classification (tiny ops), all cores for generation")
    device: str = _f("auto", "'cpu', 'cuda' or 'auto' (cuda when available)")
    seed: int = _f(0, "seed of the memory sample and the value initialisation (per edit: seed + edit index)")

    @classmethod
    def reference(cls, **overrides) -> "EditorConfig":
        """The reference implementation's settings, where the defaults deviate from them."""
        return cls(**{**REFERENCE_SETTINGS, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EditorConfig":
        return from_section(cls, d)

    @staticmethod
    def parse_overrides(items: list[str]) -> dict:
        """["key=value", ...] -> {key: value typed like the field ('none' for an optional one)}; unknown keys
        are refused."""
        kinds, out = {f.name: f.type for f in fields(EditorConfig)}, {}
        for item in items:
            key, _, raw = item.partition("=")
            if key not in kinds:
                raise ValueError(f"unknown setting {key!r} in {item!r} (see `patcher config`)")
            kind = str(kinds[key]).replace(" ", "").split("|")       # e.g. "float|None"
            if "None" in kind and raw.lower() in ("", "none"):
                out[key] = None
                continue
            parse = {"bool": lambda r: r.lower() in ("1", "true", "yes"), "int": int, "float": float, "str": str}
            try:
                out[key] = parse[kind[0]](raw)
            except ValueError:
                raise ValueError(f"{key} takes {' or '.join(kind)}, got {raw!r}") from None
        return out

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


def from_section(cls, data: dict | None):
    """A settings dataclass from a dict (a params.yaml section, a JSON file); unknown keys are refused."""
    data = dict(data or {})
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
    return cls(**data)
