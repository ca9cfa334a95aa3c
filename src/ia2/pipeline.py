"""Execute units against a results store: one model load per process, shared data and targets.

Flow for a unit (read top to bottom): group context (data, split, eval queries) -> teacher targets
(once per group, disk-cached) -> attach a fresh adapter -> train its stages -> evaluate without
demonstrations on every eval task -> activation similarity against the base model with ICL ->
save the adapter -> write the record atomically.
"""

from __future__ import annotations

import contextlib
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from . import __version__, distributed, metrics
from .adapters import attach, check_compatible, detach
from .config import Unit
from .data import Example, RunSplit, icl_demos_for_eval, load_task_data, make_split, single_label_dev_note
from .errors import IA2Error, TrainingDiverged
from .evaluate import EvalResult, evaluate
from .generation import Decoded, greedy_decode
from .io import atomic_path, write_json
from .methods import StudentExample, get_method, relative_layer_weights, stage_objective
from .models import LoadedModel, default_dtype, dtype_name, load_model
from .prompts import check_length, encode, encode_answer, icl_prompt, label_token_ids
from .store import Store
from .targets import TargetCache, TargetKey, Targets, get_targets
from .tasks import Task, get_task
from .train import TrainConfig, train_stage


@dataclass
class EvalSet:
    task: Task
    examples: list[Example]
    queries: list[list[int]]
    label_ids: list[int] | None
    notes: list[str]


@dataclass
class GroupContext:
    """Everything units of one (model, task, format, N, run) share, built lazily and kept in memory."""

    unit: Unit
    lm: LoadedModel
    cache: TargetCache
    log: callable
    eval_batch_size: int = 16
    teacher_batch_size: int = 8
    task: Task = field(init=False)
    pool: list[Example] = field(init=False)
    split: RunSplit = field(init=False)
    evals: dict[str, EvalSet] = field(init=False)
    notes: list[str] = field(init=False)
    label_ids: list[int] | None = field(init=False)
    _targets: Targets | None = None
    # Sharded runs: a context manager giving the unit's model with its adapter disabled (see frozen()).
    sharded_base: callable = None
    _icl: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict)
    timing: dict = field(default_factory=lambda: {"teacher_s": 0.0})

    def __post_init__(self):
        u, tok = self.unit, self.lm.tokenizer
        self.task = get_task(u.task)
        if self.task.eval_only:
            raise IA2Error(f"task '{u.task}' is evaluation-only (no training pool)",
                           "use it as an --eval-tasks target of another task")
        src = load_task_data(self.task, u.label_format)
        self.pool, self.notes = src.pool, list(src.notes)
        self.split = make_split(len(self.pool), u.n, u.run, dev_split=u.dev_split, labels=[e.label for e in self.pool])
        if note := single_label_dev_note(self.task.name, self.split, self.pool):
            self.notes.append(note)
        self.evals = {}
        for name in u.eval_tasks:
            t = get_task(name)
            td = src if name == u.task else load_task_data(t, u.label_format)
            self.notes += [n for n in td.notes if n not in self.notes]
            exs = td.eval[: u.limit_eval] if u.limit_eval else td.eval
            lids = label_token_ids(tok, t.label_strings(u.label_format), t.name) if t.kind == "single" else None
            self.evals[name] = EvalSet(t, exs, [encode(tok, e.query) for e in exs], lids, td.notes)
        # The source task's label tokens (dev accuracy), checked single-token here once per group.
        self.label_ids = label_token_ids(tok, self.task.label_strings(u.label_format), self.task.name) \
            if self.task.kind == "single" else None

    def frozen(self):
        """The frozen base model as a context manager (the loaded base, or the sharded unit's, adapter off)."""
        return self.sharded_base() if self.sharded_base else contextlib.nullcontext(self.lm.model)

    # --- teacher ---------------------------------------------------------------------------
    def targets(self) -> Targets:
        if self._targets is None:
            u = self.unit
            key = TargetKey(self.lm.fingerprint, self.task.name if self.task.origin == "builtin" else self.task.origin,
                            u.label_format, u.n, u.run, u.g_max,
                            "full" if u.g_max == 1 else f"top{max(64, u.kd_top_k or 0)}", dev_split=u.dev_split,
                            capture=u.ia2_capture)
            t0 = time.time()
            sharded = distributed.sharded()  # all processes compute together; else main computes, the others load
            with contextlib.nullcontext() if sharded else distributed.main_first(), self.frozen() as base:
                self._targets = get_targets(base, self.lm.tokenizer, key, self.pool, self.split, self.cache,
                                            self.teacher_batch_size, log=self.log, collective=sharded)
            self.timing["teacher_s"] += time.time() - t0
            self.timing["targets_reused"] = self._targets.reused
        return self._targets

    def student_examples(self, labels: str) -> tuple[list[StudentExample], list[StudentExample]]:
        """Training and dev examples with teacher-forced ICL responses or ground-truth answers."""
        t = self.targets()  # query ids (and the ICL labels) come from the teacher pass
        tok, eos = self.lm.tokenizer, self.lm.tokenizer.eos_token_id

        def build(teacher, pos: int) -> StudentExample:
            if labels == "icl":
                target = teacher.tokens
            else:
                target = encode_answer(tok, self.pool[pos].answer)
                if self.task.kind == "generative":
                    target = target + [eos]
            return StudentExample(teacher.query_ids, target, teacher.acts, teacher.logprobs, teacher.top_ids)

        return ([build(e, p) for e, p in zip(t.train, self.split.train)],
                [build(e, p) for e, p in zip(t.dev, self.split.dev)])

    # --- evaluation prompts ----------------------------------------------------------------------
    def icl_queries(self, name: str) -> list[list[int]]:
        """Each eval query with N-1 demonstrations from the source task's demo pool (seeded by run)."""
        if name not in self._icl:
            es, tok = self.evals[name], self.lm.tokenizer
            demos = icl_demos_for_eval(self.split.demo_pool, len(es.examples), self.unit.n - 1, self.unit.run)
            prompts = [encode(tok, icl_prompt([self.pool[d] for d in ds], e.query)) for ds, e in zip(demos, es.examples)]
            for p in prompts:
                check_length(self.lm.model, len(p), f"an ICL evaluation prompt of '{name}' (N={self.unit.n})")
            self._icl[name] = prompts
        return self._icl[name]

    def eval_on(self, model, name: str, with_demos: bool) -> EvalResult:
        es = self.evals[name]
        queries = self.icl_queries(name) if with_demos else es.queries
        return evaluate(model, self.lm.tokenizer, es.task, queries, es.examples, es.label_ids,
                        self.eval_batch_size, self._max_new(es.task))

    def _max_new(self, task: Task) -> int | None:
        # A non-default G_max also caps evaluation decoding, so short CPU runs stay short.
        return None if self.unit.g_max >= 200 or task.kind == "single" else self.unit.g_max

    def _asim_prompts(self, name: str, with_demos: bool) -> tuple[EvalSet, list[list[int]]]:
        """The first asim_examples evaluation queries of ``name``, with or without the demonstrations."""
        es = self.evals[name]
        k = min(self.unit.asim_examples, len(es.examples))
        return es, (self.icl_queries(name) if with_demos else es.queries)[:k]

    def asim_acts(self, model, name: str, with_demos: bool) -> list[torch.Tensor]:
        """Attention outputs at output positions, each model decoding its own greedy tokens."""
        es, prompts = self._asim_prompts(name, with_demos)
        g = 1 if es.task.kind == "single" else (self._max_new(es.task) or es.task.max_new_tokens)
        out = []
        for i in range(0, len(prompts), self.teacher_batch_size):
            out += [d.acts for d in greedy_decode(model, self.lm.tokenizer, prompts[i:i + self.teacher_batch_size], g,
                                                  stop=None if g == 1 else "\n\n", capture=True)]
        return out

    def base_icl_acts(self, name: str) -> list[torch.Tensor]:
        key = ("icl_acts", name)
        if key not in self._memo:
            with self.frozen() as base:
                self._memo[key] = self.asim_acts(base, name, with_demos=True)
        return self._memo[key]

    def first_outputs(self, model, name: str, with_demos: bool) -> list[Decoded]:
        """Residual stream and full next-token log-probs at the first output position (the query's last
        token, the same context for both prompts) of the asim examples: where ``ia2 analyze --residual``
        looks for the gap between aligned attention outputs and the model's answer."""
        _, prompts = self._asim_prompts(name, with_demos)
        out = []
        for i in range(0, len(prompts), self.teacher_batch_size):
            out += greedy_decode(model, self.lm.tokenizer, prompts[i:i + self.teacher_batch_size], 1, stop=None,
                                 logprobs="full", hidden=True)
        return out

    def base_icl_outputs(self, name: str) -> list[Decoded]:
        key = ("icl_outputs", name)
        if key not in self._memo:
            with self.frozen() as base:
                self._memo[key] = self.first_outputs(base, name, with_demos=True)
        return self._memo[key]


def _dtype_name(lm: LoadedModel) -> str | None:
    """The base model's parameter dtype ("float32", "bfloat16"), recorded so reports never mix precisions."""
    p = next(lm.model.parameters(), None) if lm.model is not None else None
    return dtype_name(p.dtype) if p is not None else None


def _final_dev_loss(stage: dict, early_stop: str) -> float | None:
    """The dev loss of the adapter actually kept: the best one, or the last check's under --early-stop last."""
    if early_stop == "last" and stage["curve"]:
        return stage["curve"][-1]["dev_loss"]
    return stage["best_dev"]


def _row(unit: Unit, uid: str, es: EvalSet, res: EvalResult, extra: dict) -> dict:
    m = res.metrics
    return {"uid": uid, "model": unit.model, "task": unit.task, "eval_task": es.task.name,
            "ood": es.task.name != get_task(unit.task).name, "label_format": unit.label_format, "method": unit.method,
            "n": unit.n, "run": unit.run, "lr": unit.lr, "ce_weight": unit.ce_weight,
            "labels": unit.labels if get_method(unit.method).trains else None,
            "acc": m.get("acc"), "ece": m.get("ece"), "ece_paper": m.get("ece_paper"),
            "label_acc": m.get("label_acc"), "label_ece": m.get("label_ece"), "label_mass": m.get("label_mass"),
            "n_eval": m.get("n_eval"), **extra}


def _compact_predictions(res: EvalResult) -> dict:
    keep = ("top1_prob", "correct", "top10_renorm_conf", "label_correct", "label_probs", "prediction", "gold")
    return {k: v for k, v in res.records.items() if k in keep}


class Runner:
    """Runs units into a store with one loaded model at a time; keeps the last group's context."""

    def __init__(self, store: Store, device=None, dtype=None, log=print, eval_batch_size: int = 16,
                 teacher_batch_size: int = 8, save_adapters: bool = True, report_to: str = "none"):
        # Several processes (accelerate launch / torchrun): all train, only the main one logs, evaluates and writes.
        log = log if distributed.is_main() else (lambda msg: None)
        self.store, self.device, self.dtype, self.log = store, device, dtype, log
        self.eval_batch_size, self.teacher_batch_size = eval_batch_size, teacher_batch_size
        self.save_adapters = save_adapters
        self.report_to = distributed.check_report_to(report_to)  # none, tensorboard, wandb: training curves
        self.cache = TargetCache(store.root / "targets")
        self.lm: LoadedModel | None = None
        self.ctx: GroupContext | None = None
        self._zero_shot: dict = {}

    def model(self, name: str) -> LoadedModel:
        if self.lm is None or self.lm.name != name or self.lm.model is None:
            t0 = time.time()
            lm = self._load(name)
            if self.lm is not None and self.lm.name == name:  # sharded: the last unit dropped its model
                self.lm.model = lm.model
            else:
                self.lm, self.ctx, self._zero_shot = lm, None, {}
                self.log(f"loaded {name} in {time.time() - t0:.1f}s on {self.lm.device}")
        return self.lm

    def _load(self, name: str) -> LoadedModel:
        # Several processes: each on its own device (cuda:LOCAL_RANK), whatever --device says. Sharded: the
        # full base is read on the CPU and shard_model moves each process's shard to its device.
        dev = distributed.device()
        if not distributed.sharded():
            return load_model(name, dev or self.device, self.dtype)
        lm = load_model(name, "cpu", self.dtype or default_dtype(dev))
        lm.device = dev
        return lm

    @contextlib.contextmanager
    def _sharded_unit(self, ctx: GroupContext, method):
        """Sharded runs: the unit's model (base + fresh adapter when it trains) sharded over the processes; the
        context's frozen base is that model with the adapter disabled. The model is dropped afterwards."""
        torch.manual_seed(ctx.unit.run)
        model = attach(ctx.lm.model, ctx.unit.adapter) if method.trains else ctx.lm.model
        distributed.shard_model(model)

        @contextlib.contextmanager
        def frozen():
            with model.disable_adapter() if method.trains else contextlib.nullcontext():
                yield model

        ctx.sharded_base = frozen
        try:
            yield model
        finally:
            ctx.lm.model, ctx.sharded_base = None, None

    def context(self, unit: Unit) -> GroupContext:
        lm = self.model(unit.model)
        if self.ctx is None or self.ctx.unit.group != unit.group or self.ctx.unit.eval_tasks != unit.eval_tasks \
                or self.ctx.unit.limit_eval != unit.limit_eval or self.ctx.unit.asim_examples != unit.asim_examples:
            self.ctx = GroupContext(unit, lm, self.cache, self.log, self.eval_batch_size, self.teacher_batch_size)
            for note in self.ctx.notes:
                self.log(f"note: {note}")
        return self.ctx

    def run_unit(self, unit: Unit) -> dict:
        """Compute one unit and write its record; a diverged training is recorded as failed."""
        uid = unit.uid()
        ctx = self.context(unit)
        method = get_method(unit.method)
        t0 = time.time()
        record = {"uid": uid, "unit": unit.to_dict(), "ia2_version": __version__, "status": "done", "error": None,
                  "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                              "torch": torch.__version__, "device": str(ctx.lm.device), "dtype": _dtype_name(ctx.lm)},
                  "notes": ctx.notes, "results": [], "predictions": {}, "train": None}
        teacher_before = ctx.timing["teacher_s"]
        try:
            with self._sharded_unit(ctx, method) if distributed.sharded() else contextlib.nullcontext() as model:
                if method.trains:
                    record.update(self._train_and_eval(unit, uid, ctx, method, model))
                elif distributed.is_main() or model is not None:  # baselines: main only, or all when sharded
                    self._baseline(unit, uid, ctx, model or ctx.lm.model, record)
        except TrainingDiverged as e:
            record.update(status="failed", error=str(e), failed_step=e.step, failed_stage=e.stage, results=[])
            self.log(f"unit {uid} ({unit.method}, lr={unit.lr}) failed: {e}")
        record["timing"] = {"total_s": time.time() - t0, "teacher_s": ctx.timing["teacher_s"] - teacher_before,
                            "targets_reused": ctx.timing.get("targets_reused")}
        if "train_s" in record:
            record["timing"]["train_s"] = record.pop("train_s")
            record["timing"]["eval_s"] = record.pop("eval_s")
        if distributed.is_main():
            self.store.write(record)
        return record

    def _baseline(self, unit: Unit, uid: str, ctx: GroupContext, model, record: dict) -> None:
        """Zero-shot or ICL: evaluate the frozen base on every eval set."""
        for name, es in ctx.evals.items():
            if unit.method == "icl":
                res = ctx.eval_on(model, name, True)
            else:  # zero-shot does not depend on N or the run: evaluate once per eval set
                key = (unit.model, name, unit.label_format, unit.limit_eval, unit.g_max)
                if key not in self._zero_shot:
                    self._zero_shot[key] = ctx.eval_on(model, name, False)
                res = self._zero_shot[key]
            record["results"].append(_row(unit, uid, es, res, {"asim": None, "asim_layers": None}))
            record["predictions"][name] = _compact_predictions(res)

    def _train_and_eval(self, unit: Unit, uid: str, ctx: GroupContext, method, sharded_model=None) -> dict:
        """Train a fresh adapter (or, sharded, the one ``sharded_model`` carries), evaluate it, save it."""
        check_compatible(unit.adapter, unit.method, method.needs_activations)
        lm = ctx.lm
        # Everything the frozen base computes happens before the adapter is attached (get_peft_model injects
        # adapter layers into the base modules themselves), or, sharded, with the adapter disabled.
        ctx.targets()
        for name in ctx.evals:
            ctx.base_icl_acts(name)
        if sharded_model is None:
            torch.manual_seed(unit.run)
            peft_model = attach(lm.model, unit.adapter)
        else:
            peft_model = sharded_model
        stages, results, preds = [], [], {}
        tracker = distributed.open_tracker(self.report_to, self.store.root / "tracking",
                                           f"{unit.task}-n{unit.n}-run{unit.run}-{unit.method}-lr{unit.lr:g}-{uid}",
                                           unit.to_dict())  # None unless --report-to and main process
        try:
            t_train, teacher_s0 = time.time(), ctx.timing["teacher_s"]
            tcfg = TrainConfig(lr=unit.lr, batch_size=min(unit.batch_size, unit.n), max_epochs=unit.max_epochs,
                               patience=unit.patience, early_stop=unit.early_stop, seed=unit.run)
            for stage in method.stages:
                labels = stage.labels or unit.labels
                train, dev = ctx.student_examples(labels)
                weights = relative_layer_weights(train) if unit.ia2_loss == "relative" else None
                obj = stage_objective(stage, unit.labels, unit.ce_weight or 0.0, unit.kd_top_k, weights,
                                      unit.ia2_capture)
                on_check = tracker.stage(f"{len(stages) + 1}-{obj.name}") if tracker else None
                log = train_stage(peft_model, obj, train, dev, tcfg, lm.tokenizer.pad_token_id, on_check=on_check)
                stages.append({**asdict(log), "labels": obj.labels})
            train_s = time.time() - t_train - ctx.timing["teacher_s"] + teacher_s0
            if not distributed.is_main() and sharded_model is None:  # DDP: the others only help train
                return {"results": [], "predictions": {}, "train": {"stages": stages}, "adapter": None,
                        "train_s": train_s, "eval_s": 0.0}
            t_eval = time.time()
            dev_acc = self._dev_acc(peft_model, ctx)
            for name, es in ctx.evals.items():
                res = ctx.eval_on(peft_model, name, False)
                per_ex = [metrics.activation_similarity(a, b) for a, b in
                          zip(ctx.base_icl_acts(name), ctx.asim_acts(peft_model, name, False))]
                asim, asim_layers = metrics.asim_summary(per_ex) if per_ex else (None, None)
                results.append(_row(unit, uid, es, res, {"asim": asim, "asim_layers": asim_layers,
                                                         "dev_loss": _final_dev_loss(stages[-1], unit.early_stop), "dev_acc": dev_acc}))
                preds[name] = _compact_predictions(res)
            eval_s = time.time() - t_eval
            adapter_dir = None
            # Sharded: gather the adapter to full tensors (collective) so the saved one loads in plain peft.
            state = distributed.full_state(peft_model) if sharded_model is not None and self.save_adapters else None
            if self.save_adapters and distributed.is_main():
                adapter_dir = self.store.root / "adapters" / uid
                with atomic_path(adapter_dir, is_dir=True) as tmp:
                    peft_model.save_pretrained(str(tmp), state_dict=state)
                    write_json(tmp / "ia2_training.json", {"unit": unit.to_dict(), "stages": stages,
                                                           "ia2_version": __version__})
        finally:
            if sharded_model is None:
                lm.model = detach(peft_model)
            if tracker:
                tracker.close()
        return {"results": results, "predictions": preds, "train": {"stages": stages},
                "adapter": str(adapter_dir.relative_to(self.store.root)) if adapter_dir else None,
                "train_s": train_s, "eval_s": eval_s}

    def _dev_acc(self, model, ctx: GroupContext) -> float | None:
        """Label accuracy on the source dev examples without demonstrations (for --select-on dev-acc)."""
        if ctx.task.kind != "single" or not ctx.split.dev:
            return None
        tok = ctx.lm.tokenizer
        exs = [ctx.pool[p] for p in ctx.split.dev]
        res = evaluate(model, tok, ctx.task, [encode(tok, e.query) for e in exs], exs, ctx.label_ids,
                       self.eval_batch_size)
        return res.metrics["acc"]


def run_units(units: list[Unit], store: Store, runner: Runner, resume: bool = True, claim: bool = False,
              progress=None) -> dict:
    """Run units in an order that shares work (grouped), skipping finished ones when resuming."""
    order = sorted(range(len(units)), key=lambda i: (units[i].model, units[i].group, i))
    stats = {"done": 0, "skipped": 0, "failed": 0, "claimed_elsewhere": 0}
    for i in order:
        unit = units[i]
        uid = unit.uid()
        if resume and distributed.agree(store.has(uid)):  # several processes: the main one's answer
            stats["skipped"] += 1
            if progress:
                progress(unit, "skipped")
            continue
        if claim and not distributed.agree(distributed.is_main() and store.claim(uid)):  # main claims for all
            stats["claimed_elsewhere"] += 1
            continue
        try:
            if claim and resume and distributed.agree(store.has(uid)):  # finished by another worker meanwhile
                stats["skipped"] += 1
                continue
            main = distributed.is_main()
            if main:
                store.log_event("start", uid)
            rec = runner.run_unit(unit)
            if main:
                store.log_event(rec["status"], uid)
                store.write_results()  # after every unit, so a killed sweep leaves a results.jsonl of what finished
            stats["failed" if rec["status"] == "failed" else "done"] += 1
            if progress:
                progress(unit, rec["status"])
        finally:
            if claim and distributed.is_main():
                store.release(uid)
    if distributed.is_main():
        store.write_results()
    return stats


def format_exception(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
