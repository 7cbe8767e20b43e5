"""The editor's hyperparameters: one dataclass. Defaults are the reference implementation's (Huang et al.,
ICLR 2023, see shared/TPATCHER.md) unless a field's help says otherwise."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


# Where the defaults deviate from the reference implementation, the reference's values (each deviation is
# measured in docs/benchmarks/).
# Those the library keeps at the reference's (bias_shift, value_gain; shift_guard, inert without a shift) are pinned
# too: the benchmark applies them over a model's pipeline settings (params.yaml), which change those.
REFERENCE_SETTINGS = {"activation": "ffn", "check_after": 100, "min_lr": 0.0, "max_neurons_per_edit": 5,
                      "phrasings": 0, "vocab_candidates": 0, "subject_layer": None,
                      "retry_without_decay": False, "bias_shift": 0.0, "shift_guard": None, "value_gain": 1.0}


@dataclass
class EditorConfig:
    # optimisation of one patch
    lr: float = _f(1e-2, "Adam learning rate for the patch parameters")
    weight_decay: float = _f(0.01, "Adam weight decay")
    grad_clip: float = _f(5.0, "max gradient norm per step")
    plateau_factor: float = _f(0.5, "LR multiplier when the training loss plateaus")
    plateau_patience: int = _f(10, "steps without improvement before the LR is cut")
    min_lr: float = _f(1e-3, "floor of the plateau schedule (reference: none). Without it a hard edit's LR fell "
                             "from 1e-2 to 1e-5 within 200 steps, once its loss stopped falling fast, and it "
                             "failed at 2 x 2000 steps (SmolLM2 edit 343 with knee neurons); with 1e-3 it was "
                             "right in 1325 steps (1e-4: still not)")
    max_steps: int = _f(2000, "step limit per edit; an edit not right by then has failed")
    # early stopping on the validation memory (reference schedule)
    check_after: int = _f(25, "first step at which success and the validation loss are checked (reference: "
                              "100; 25 kept the same ER and locality over 200 SmolLM2 edits at 0.6x the steps)")
    check_every: int = _f(25, "steps between checks")
    val_min_improvement: float = _f(1e-3, "stop at the first successful check that does not improve the "
                                          "validation-memory loss by more than this")
    max_checks_right: int = _f(0, "stop at the latest at the N-th check at which the edit is right (0: when the "
                                  "validation-memory loss stops improving, however long; the reference). "
                                  "Without the memory loss (beta = 0) that loss falls for ever, as l_a raises "
                                  "the edit's activation: 8 of SmolLM2's first 200 edits trained to max_steps "
                                  "(2,000) although right")
    # losses: L = l_e + alpha * l_a + beta * (l_m1 + l_m2)
    alpha: float = _f(1.0, "weight of the activation loss l_a")
    beta: float = _f(10.0, "weight of the memory loss l_m (reference: 5 for FEVER, 10 for zsRE)")
    act_topk: int = _f(5, "l_a: mean of the top-k of exp(act_margin - a_edit)")
    act_margin: float = _f(0.0, "l_a margin")
    mem_topk: int = _f(1000, "l_m: top-k memory activations per neuron")
    m1: float = _f(3.0, "l_m1 margin: a_edit must exceed every a_mem by m1")
    m2: float = _f(-3.0, "l_m2 margin: every a_mem must stay below m2")
    entropy_weight: float = _f(0.1, "classification l_e: cross-entropy minus this times the output entropy")
    label_smoothing: float = _f(0.1, "generation l_e: label smoothing of the per-token NLL")
    # the patch
    max_neurons_per_edit: int = _f(32, "generation: at most this many neurons (wrong target tokens) per edit; an "
                                       "edit with more wrong tokens fails untrained (reference: 5, which left "
                                       "one of SmolLM2's 523 real mistakes, a 10-wrong-token answer, unfixable)")
    value_scale_init: float = _f(10.0, "initial trainable scale of the value vector")
    value_init: str = _f("random", "value direction at the start: 'random' (reference) or 'lead': the "
                                   "direction that most increases the target's lead at the neuron's position")
    activation: str = _f("auto", "patch neuron activation: 'knee' (ReLU up to 1, slope 0.1 beyond; patcher.engine.patch.Knee),"
                                 " 'relu', 'ffn' (the FFN's own, which merges exactly into GELU FFNs with biases: BERT,"
                                 " GPT-2, BART; the reference), any transformers activation name, or 'auto': an "
                                 "existing patch set's own, else 'knee'. ReLU has no negative tail: with the FFN's own "
                                 "(SiLU, GELU) every neuron leaks into every position; measured: SmolLM2 200 edits "
                                 "TestR 0.88 -> 1.00, MiniLM 460 edits TestR 0.987 -> 0.996 and GR 0.947 -> 0.962 "
                                 "(docs/benchmarks). The knee keeps that and makes weak firing on an unseen wording act"
                                 " almost fully (ReLU scales it down): GR 0.649 -> 0.753 on SmolLM2's 523 edits, 0.972 "
                                 "-> 0.981 on MiniLM's 460. Neither merges into a GELU FFN: they export as a branch")
    bias_shift: float = _f(0.0, "raise each new neuron's bias by this much once it is trained (the reference: 0), "
                                "unless that leaves the edit wrong. Training leaves the neuron's threshold at the "
                                "edge of its training wordings (the memory loss pushes every memory pre-activation "
                                "below m2 = -3, the edit's above the memory by m1), so an unseen wording in between "
                                "stays silent; the shift moves the threshold into that gap. A later wrong edit "
                                "takes the shift back from the neurons that fire on its wordings only because of "
                                "it (Editor._take_back_shifts). Measured (one seed, docs/benchmarks): 1.0 on "
                                "SmolLM2's whole stream (523 edits) GR 0.753 -> 0.846, SR/ER/TrainR/TestR 1.000 "
                                "both, test predictions unchanged 0.987 -> 0.967; on MiniLM (460) GR 0.981 -> "
                                "0.992, TestR 0.996 -> 0.991, test unchanged 0.984 -> 0.967: set per model "
                                "(params.yaml)")
    shift_guard: float | None = _f(1.0, "the bias shift stops where the neuron's highest memory pre-activation "
                                        "(its edit's negatives included) would come within this of the "
                                        "threshold (None: the full shift always). The shift moves the threshold "
                                        "into the gap the memory loss opened (every memory row below m2 = -3); "
                                        "training does not always open it: on SmolLM2's seed 2 the country "
                                        "Georgia's neuron left the negative 'The state capital of Georgia is' at "
                                        "-1.07, the full shift put the unseen 'The capital of the state of "
                                        "Georgia is' at +0.60 and broke it (TrainR 0.941)")
    value_gain: float = _f(1.0, "multiply each new neuron's value by this once it is trained, with the bias "
                                "shift and the same fallback (1: the reference). An unseen wording that fires "
                                "the neuron fully can still be wrong: 30 of 152 of SmolLM2's wrong held-out "
                                "rephrasings after 342 edits. Measured (one seed): 1.25 with bias_shift 1 on "
                                "SmolLM2's whole stream (523) GR 0.846 -> 0.871, every other metric and the "
                                "locality unchanged: SmolLM2's pipeline setting (params.yaml)")
    success_margin: float = _f(0.0, "an edit counts as right when every judged target leads the best other "
                                    "logit by more than this (0: plain argmax, the reference)")
    phrasings: int = _f(7, "train each edit on up to this many other phrasings of its input as well (the "
                           "record's `phrasings`, never its `rephrases`; the memory covers the same training "
                           "wordings of other facts): the edit loss on every phrasing, and every phrasing's "
                           "activation above the memory's (0: the input alone, the reference). Measured (one "
                           "seed, docs/benchmarks): 3 raised GR from 0.86 to 0.95 on MiniLM (460 edits) and from "
                           "0.18 to 0.33 on SmolLM2 (60 edits); 7 from 0.962 to 0.972 on MiniLM (460) and from "
                           "0.351 to 0.439 on SmolLM2 (the whole stream, 523; TrainR 0.941 both); 15 (all the "
                           "bank has) GR 0.980 on MiniLM (460) and 0.563 on SmolLM2 at 200 edits, but SmolLM2 lost "
                           "2 of its 17 TrainR facts (0.882) and 5% of test predictions changed (3% with 7), at ~1.7x the time per "
                           "edit: more wordings make keys broader, on other facts too")
    vocab_candidates: int = _f(64, "generation: train the edit loss on the outputs that matter, each judged "
                                   "position's top-k (plus the targets; checks add the current top-k, the set "
                                   "only grows) instead of the whole vocabulary; success is still judged on the "
                                   "whole vocabulary, and an edit that fails this way is trained again on the "
                                   "whole vocabulary (0: the whole vocabulary always, the reference). 64 gave the "
                                   "same metrics over 60 SmolLM2 edits at 0.35x the time per edit; over "
                                   "SmolLM2's whole stream (523) no edit needed the fallback")
    subject_layer: int | None = _f(None, "decoder-only LMs: each patch neuron's pre-activation also reads this "
                                         "layer's FFN input, as a running max over the prompt so far: a(t) = "
                                         "k.q[t] + b + max_{p<=t} u.z[p] (patcher/subject.py), so a neuron fires "
                                         "on its subject in any wording; u starts at the subject's last token (the "
                                         "text the input shares with its phrasings). None: the last FFN's input "
                                         "alone (the reference). Not mergeable; fast path only. Pass `negatives` "
                                         "(other questions about the subject) to keep its other facts")
    retry_without_decay: bool = _f(True, "an edit still wrong after training is trained once more without weight "
                                         "decay, before the whole-vocabulary retry (False: the reference, no retry). "
                                         "Weight decay pulls on each parameter alike, the edit loss is a mean over "
                                         "every answer position of every wording, so a long answer's values stay "
                                         "small: SmolLM2's edit 237, an 18-token answer with 11 neurons and 16 "
                                         "wordings, failed after 4,000 steps on seed 2 (lead -1.1; right with a lead "
                                         "of 0.003 on seeds 0 and 1); without weight decay it was right in 75 steps, "
                                         "lead 2.2")
    # the procedure
    keep_failed: bool = _f(False, "keep the neurons of an edit that failed (the reference does, silently)")
    edit_copies: int = _f(8, "reference path: the edit input is fed this many times per step")
    reference_dropout: bool = _f(True, "reference path: dropout on while training (as the reference)")
    memory_search: str = _f("int8", "how the memory loss finds each neuron's top mem_topk memory rows on a CPU: "
                                    "'exact' (a float32 pass over the memory every step) or 'int8' (a pass over an "
                                    "int8 copy, 4x fewer bytes to read, the rows it ranks highest then scored "
                                    "exactly; patcher/memory.py). The pass is bound by memory bandwidth and was most "
                                    "of a SmolLM2 step late in the stream (~100k rows)")
    memory_full_pass_every: int = _f(10, "on a memory over 16k rows, after an edit's first 25 steps, a pass over the "
                                         "whole memory for the memory loss every N steps only; in between each new "
                                         "neuron's top rows are found among the prompts of its top 2 x mem_topk rows "
                                         "at the last pass (patcher.engine.memory.TopRows). 1: every step (the reference). "
                                         "10: SmolLM2 after 400 edits (160k rows) 24 -> 16 ms per step, the memory "
                                         "loss within 0.5% of the whole pass's; its whole stream (523 edits) 35.5 "
                                         "-> 26.4 min, the same metrics (GR 0.869 -> 0.872)")
    output_grad: str = _f("int8", "the gradient through a language model's output layer on a CPU: 'int8' (through "
                                  "an int8 copy of it: 0.9-1.6 ms instead of 5-8.5 per step for SmolLM2's 49152 x "
                                  "576, within 1% of the exact gradient; the forward, every loss, check and "
                                  "judgement stay exact) or 'exact'. Every step of the reference settings and the "
                                  "fine-tuning baselines goes through the whole layer (patcher/arch.py)")
    memory_size: int = _f(40000, "most FFN-input vectors kept from the training split for the memory "
                                 "(sampled with the seed); edit inputs are always added on top")
    threads: int = _f(0, "torch CPU threads; 0: 1 for classification (tiny ops), all cores for generation")
    seed: int = _f(0, "seed of the value initialisation, per edit: seed + edit index")
    device: str = _f("cpu", "'cpu', 'cuda' or 'auto' (cuda when available)")

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
        """["key=value", ...] -> {key: value typed like the field}; unknown keys are refused."""
        defaults, out = EditorConfig(), {}
        for item in items:
            key, _, raw = item.partition("=")
            if not hasattr(defaults, key):
                raise ValueError(f"unknown setting {key!r} in {item!r} (see `patcher config`)")
            kind = type(getattr(defaults, key))
            if getattr(defaults, key) is None:       # optional integers (subject_layer)
                out[key] = None if raw.lower() in ("", "none") else int(raw)
            else:
                out[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
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
