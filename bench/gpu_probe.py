"""The first thing to run on a GPU: every fault a reading of the GPU paths predicted that only a GPU can show.

    python bench/gpu_probe.py                  # on CUDA (bash bench/gpu_suite.sh probe runs this)
    python bench/gpu_probe.py --device cpu     # a dry run of what can run on the CPU

One line per check as it finishes: PASS, FAIL (with what was seen) or SKIP (no CUDA). In order:

1. rng: last.pt keeps the RNG state of the run's own GPU, and restores a file of the earlier
   format (every visible GPU's state) on a machine that sees fewer GPUs.
2. device checks: a loss given negative weights on the GPU returns NaN and the CUDA context
   lives on (a device-side assert would have killed it); DKD runs without a host sync.
3. resume: IKL-AT (device-resident loader, AWP, EMA) and IKL-KD runs on the GPU, stopped after
   epoch 1 and resumed, the AT one from a last.pt rewritten to the earlier eight-GPU format,
   end with the very weights of uninterrupted runs (deterministic=true).
4. determinism: two uninterrupted deterministic runs give the same bits (and whether two
   runs without deterministic=true do, for the record).
   The feature distillers (CRD's device-side sampler and memory bank, OFD, ReviewKD, ...) the same
   way, each in bf16.
5. syncs: where one IKL-AT and one IKL-KD epoch, and a KD validation, make the host wait for
   the GPU (torch's sync debug mode); only the progress read at the epoch's last batch, the
   epoch's totals and the validation's final count may.
6. bf16: the cosine between the bf16 and the fp32 change of WRN-34-10's logits per eps of
   the ramp (`bench/bf16_perturbation.py`), with the real TF32 beside them.
7. compiled attack: the time of a compiled PGD attack with the weights frozen (ours: its
   backward computes the input's gradient only) against one with them requiring grad (before).

Exits 1 when a check fails. Small models and data written here in CIFAR's format: about two
to three minutes on one H100, most of it the compiles of check 7.
"""

import argparse
import contextlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_cifar  # noqa: E402  (CIFAR's on-disk format)


def run_checks(checks) -> bool:
    """Run each (name, needs_cuda, function) in order, printing its line as it ends; a failure is
    reported and the next check runs. True when none failed."""
    failed = 0
    for name, needs_cuda, function in checks:
        if needs_cuda and not torch.cuda.is_available():
            print(f"SKIP {name}: needs CUDA", flush=True)
            continue
        started = time.perf_counter()
        try:
            detail = function()
            print(f"PASS {name} ({time.perf_counter() - started:.0f} s): {detail}", flush=True)
        except Exception as error:  # every fault is reported, then the next check runs
            failed += 1
            where = traceback.extract_tb(error.__traceback__)[-1]
            print(
                f"FAIL {name} ({time.perf_counter() - started:.0f} s): {type(error).__name__}: {error} "
                f"[{Path(where.filename).name}:{where.lineno}]",
                flush=True,
            )
    print(f"{len(checks) - failed} of {len(checks)} checks did not fail", flush=True)
    return failed == 0


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same_bits(a, b):
    """Equal keys and bit-equal tensors, nested dicts (a method's extra state: LAS-AT's optimiser) included."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    return a == b


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dkl_probe_"))
    cifar = write_cifar(work / "data", "cifar10", num_train=1024, num_test=200)

    from adv_training.train import main as train_at
    from engine import environment
    from engine.run_folder import RunFolder
    from knowledge_distillation.train import main as train_kd

    def at_run(name, *extra):
        argv = [
            "--config",
            str(ROOT / "configs" / "adv_training" / "cifar10_ikl_a4b20t4.yaml"),
            f"data.root={cifar}",
            "data.verify_checksum=false",
            "data.num_workers=0",
            "data.batch_size=128",
            "data.test_batch_size=200",
            "model.arch=WideResNet",
            "model.depth=10",
            "model.widen_factor=1",
            "epochs=2",
            f"device={args.device}",
            f"out_dir={work / 'runs'}",
            f"name={name}",
            "eval.num_examples=200",
            "eval.pgd_steps=2",
            "awp.warmup=1",
            "ema.start_epoch=1",
            "epoch_average.enabled=false",
            *extra,
        ]
        code = train_at(argv)
        if code != 0:
            raise RuntimeError(f"the IKL-AT run {name} exited with {code}")
        return work / "runs" / name

    teacher = work / "teacher.pt"

    def kd_run(name, *extra):
        if not teacher.exists():
            from models import build_model

            torch.manual_seed(0)
            torch.save(build_model("digits_cnn", 10).state_dict(), teacher)
        argv = [
            "--config",
            str(ROOT / "configs" / "knowledge_distillation" / "digits_ikl.yaml"),
            "epochs=2",
            f"device={args.device}",
            f"out_dir={work / 'runs'}",
            f"name={name}",
            f"teacher.checkpoint={teacher}",
            "ikl.class_prior=true",
            *extra,
        ]
        code = train_kd(argv)
        if code != 0:
            raise RuntimeError(f"the IKL-KD run {name} exited with {code}")
        return work / "runs" / name

    def rng_of_the_runs_gpu():
        torch.zeros(1, device=device)
        state = environment.capture_rng_state()
        if not isinstance(state["cuda"], torch.Tensor):
            raise AssertionError(f"state['cuda'] is a {type(state['cuda']).__name__}")
        expected = torch.rand(4, device=device)
        environment.restore_rng_state({**state, "cuda": [state["cuda"]] + [torch.zeros_like(state["cuda"])] * 7})
        if not torch.equal(torch.rand(4, device=device), expected):
            raise AssertionError("the restored CUDA stream differs")
        return f"one state of {state['cuda'].numel()} bytes, current device {torch.cuda.current_device()}"

    def value_checks_on_the_device():
        from losses import dkd_loss, ikl_loss

        student, teacher_logits = torch.randn(8, 10, device=device), torch.randn(8, 10, device=device)
        bad = torch.rand(8, 10, device=device)
        bad[3, 4] = -1.0
        loss = ikl_loss(student, teacher_logits, weights=bad)
        torch.cuda.synchronize()
        if not torch.isnan(loss).item():
            raise AssertionError(f"the loss is {loss.item()}, not NaN")
        targets = torch.randint(0, 10, (8,), device=device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            dkd_loss(student, teacher_logits, targets)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return "ikl_loss NaN, context alive, dkd_loss sync-free"

    deterministic = "deterministic=true"

    def resume_at():
        whole = at_run("at_whole", deterministic)
        at_run("at_split", deterministic, "stop_after=1")
        last = RunFolder(work / "runs" / "at_split").last
        state = torch.load(last, map_location="cpu", weights_only=True)
        if "cuda" in state["rng"]:  # the earlier format: every visible GPU's state, the run's first
            state["rng"]["cuda"] = [state["rng"]["cuda"]] + [torch.zeros_like(state["rng"]["cuda"])] * 7
            state["rng_per_rank"] = None
            torch.save(state, last)
        split = at_run("at_split", deterministic, "resume=true")
        if not same_bits(weights(RunFolder(whole).last), weights(RunFolder(split).last)):
            raise AssertionError("the resumed run's weights differ from the uninterrupted run's")
        return "bit-equal weights after 2 epochs"

    def resumed_equally(run, name, options):
        """``run`` (at_run or kd_run) whole, then stopped after epoch 1 and resumed: an AssertionError unless the
        two last.pt hold the same bits, model and method state."""
        whole = run(f"{name}_whole", *options)
        run(f"{name}_split", *options, "stop_after=1")
        split = run(f"{name}_split", *options, "resume=true")
        a = torch.load(RunFolder(whole).last, map_location="cpu", weights_only=True)
        b = torch.load(RunFolder(split).last, map_location="cpu", weights_only=True)
        if not same_bits(a["model"], b["model"]) or not same_bits(a["method"] or {}, b["method"] or {}):
            raise AssertionError(f"{name}: the resumed run differs from the uninterrupted one")

    def feature_distillers():
        """Each feature distiller on the device (bf16 autocast, CRD's device-side sampler and memory,
        OFD's margins, ReviewKD's fusion) two epochs, stopped and resumed: the student's and the
        distiller's state bit-equal to an uninterrupted run's."""
        methods = ("fitnet", "at", "nst", "pkt", "kdsvd", "ofd", "rkd", "vid", "sp", "crd", "reviewkd")
        common = ("method={}", "ikl.class_prior=false", "crd.nce_k=256", "precision=bf16", deterministic)
        for method in methods:
            resumed_equally(kd_run, f"fd_{method}", [option.format(method) for option in common])
        return f"{len(methods)} distillers bit-equal after 2 epochs (bf16)"

    def logit_distillers():
        """DIST, MLKD (two views through both networks), CTKD (its temperature trained on the device) and KD with
        logit standardization, each in bf16 two epochs, stopped and resumed: student and distiller bit-equal."""
        variants = {
            "dist": ("method=dist",),
            "mlkd": ("method=mlkd", "logit_standardization=true"),
            "ctkd": ("method=ctkd", "ctkd.curriculum_epochs=2"),
            "kd_ls": ("method=kd", "logit_standardization=true"),
        }
        for name, options in variants.items():
            resumed_equally(kd_run, f"ld_{name}", (*options, "ikl.class_prior=false", "precision=bf16", deterministic))
        return f"{', '.join(variants)} bit-equal after 2 epochs (bf16)"

    def comparison_rows():
        """The comparison rows' new paths on the device in bf16: LBGAT (its natural classifier trained
        and resumed beside the robust model) with the authors' 4 BatchNorm groups, AT-AWP with its
        input normalisation and train-mode attack, DAJAT (its augmented views' own BatchNorms, compiled)
        and LAS-AT (its strategy network, per-sample attack and look-ahead copy, its state on the device);
        each stopped and resumed equals an uninterrupted run."""
        variants = {
            "lbgat": ("method=lbgat", "lbgat.natural_arch=ResNet18_cifar", "awp.enabled=false", "batchnorm_groups=4"),
            "at_awp": ("method=pgd", "model.preprocess=meanstd", "attack.eval_mode=false", "batchnorm_groups=4"),
            "dajat": (
                "method=dajat",
                "data.augment=autoaug",
                "data.augmented_views=2",
                "model.view_batchnorm=true",
                "batchnorm_groups=1",
                "compile=true",
            ),
            "las_at": (
                "method=las_at",
                "attack.eps_ramp=false",
                "las_at.steps=[1, 2]",
                "las_at.reward_steps=2",
                "las_at.reward_restarts=1",
                "batchnorm_groups=1",
            ),
        }
        for name, options in variants.items():
            resumed_equally(at_run, name, (*options, "precision=bf16", deterministic))
        return "LBGAT, AT-AWP (bf16, 4 BN groups), DAJAT (compiled) and LAS-AT bit-equal after 2 epochs"

    def resume_kd():
        whole = kd_run("kd_whole", deterministic)
        kd_run("kd_split", deterministic, "stop_after=1")
        split = kd_run("kd_split", deterministic, "resume=true")
        if not same_bits(weights(RunFolder(whole).last), weights(RunFolder(split).last)):
            raise AssertionError("the resumed distillation's weights differ")
        return "bit-equal weights after 2 epochs"

    def determinism():
        again = at_run("at_again", deterministic)
        if not same_bits(weights(RunFolder(work / "runs" / "at_whole").last), weights(RunFolder(again).last)):
            raise AssertionError("two runs with deterministic=true differ")
        first, second = at_run("at_free_1"), at_run("at_free_2")
        free = same_bits(weights(RunFolder(first).last), weights(RunFolder(second).last))
        return f"equal; without deterministic=true two runs {'are also equal' if free else 'differ (expected)'}"

    def host_syncs():
        import bench.at_step as at_step
        import bench.kd_step as kd_step

        at_args = argparse.Namespace(
            arch="WideResNet", depth=16, widen_factor=2, batch_size=128, iterations=3, channels_last=True
        )
        ikl = at_step.our_iterations("ikl", at_args, "bf16", device, channels_last=True)
        ikl()  # warm-up
        kd_args = argparse.Namespace(batch_size=64, image_size=64, iterations=3)
        kd = kd_step.our_iterations(kd_step.pair_config("r34_r18", "bf16", True, False), kd_args, device)
        kd()
        from engine.metrics import topk_accuracy

        validation = [
            (torch.rand(64, 3, 64, 64).pin_memory(), torch.randint(0, 1000, (64,)).pin_memory()) for _ in range(3)
        ]  # as a DataLoader with pin_memory delivers them
        evaluate = lambda: topk_accuracy(kd.student, validation, device, channels_last=True)  # noqa: E731
        evaluate()
        places = {
            "IKL-AT": at_step.host_syncs(ikl),
            "IKL-KD": at_step.host_syncs(kd),
            "KD validation": at_step.host_syncs(evaluate),
        }
        # The reads meant: the running sums at the epoch's last batch and its totals (metrics.py),
        # the timer's own synchronize (timing.py), the KD epoch's before it reads the clock, and
        # the validation's one read of its counts at the end.
        kd_source = (ROOT / "knowledge_distillation" / "train.py").read_text().splitlines()
        kd_reads = {
            f"knowledge_distillation/train.py:{n}"
            for n, line in enumerate(kd_source, 1)
            if "torch.cuda.synchronize()" in line or "reduce_sum(counts).tolist()" in line
        }

        def meant(place):  # "folder/file.py:line xN"
            where = place.rsplit(" x", 1)[0]
            return where.startswith(("engine/metrics.py:", "bench/timing.py:")) or where in kd_reads

        unexpected = {
            loop: [p for p in found.split(", ") if p != "none" and not meant(p)] for loop, found in places.items()
        }
        if any(unexpected.values()):
            raise AssertionError(f"host syncs outside the progress reads: {unexpected}; all: {places}")
        return "; ".join(f"{loop}: {found}" for loop, found in places.items())

    def bf16_perturbation():
        import bench.bf16_perturbation as bf16

        bf16.main(["--arch", "WideResNet34_10", "--device", str(device), "--batch-size", "128"])
        return "table above"

    def compiled_attack():
        import adv_training.attacks as attacks
        from models import build_model

        torch.manual_seed(0)
        model = build_model("WideResNet", 100, dataset="cifar100", depth=16, widen_factor=4).to(device)
        model = model.to(memory_format=torch.channels_last)
        x = torch.rand(128, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 100, (128,), device=device)

        def seconds_per_attack(frozen):
            torch._dynamo.reset()
            compiled = torch.compile(model, dynamic=False)
            real = attacks.parameters_frozen
            if not frozen:
                attacks.parameters_frozen = lambda module: contextlib.nullcontext()  # the code before the fix
            try:

                def attack():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return attacks.pgd(
                            compiled,
                            x,
                            lambda logits: F.cross_entropy(logits.float(), y),
                            eps=8 / 255,
                            step_size=2 / 255,
                            steps=5,
                        )

                attack()  # compiles
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(5):
                    attack()
                torch.cuda.synchronize()
                return (time.perf_counter() - started) / 5
            finally:
                attacks.parameters_frozen = real

        ours, before = seconds_per_attack(True), seconds_per_attack(False)
        if ours > 1.1 * before:
            raise AssertionError(f"frozen weights made the compiled attack slower: {ours:.4f} s against {before:.4f} s")
        return (
            f"WRN-16-4, batch 128, bf16, 5 steps: {1000 * ours:.1f} ms with frozen weights, "
            f"{1000 * before:.1f} ms with weights requiring grad ({before / ours:.2f}x)"
        )

    checks = [
        ("rng: last.pt keeps the run's own GPU state; an eight-GPU file restores on one", True, rng_of_the_runs_gpu),
        (
            "device checks: negative weights give NaN, the CUDA context lives on; DKD without host sync",
            True,
            value_checks_on_the_device,
        ),
        (
            "resume: IKL-AT on the device loader, stopped and resumed from an eight-GPU last.pt, equals uninterrupted",
            False,
            resume_at,
        ),
        ("resume: IKL-KD stopped and resumed equals uninterrupted", False, resume_kd),
        (
            "feature distillers: each on the device in bf16, stopped and resumed, equals uninterrupted",
            False,
            feature_distillers,
        ),
        (
            "logit distillers: DIST, MLKD, CTKD and KD + LS on the device in bf16, stopped and resumed, equal "
            "uninterrupted",
            False,
            logit_distillers,
        ),
        (
            "comparison rows: LBGAT, AT-AWP, DAJAT and LAS-AT in bf16, stopped and resumed, equal uninterrupted",
            False,
            comparison_rows,
        ),
        ("determinism: two deterministic IKL-AT runs give the same bits", False, determinism),
        ("syncs: only the progress read and the totals make the host wait, in IKL-AT and IKL-KD", True, host_syncs),
        (
            "bf16: the logit change for x_adv - x per eps of the ramp, bf16 and TF32 against fp32",
            True,
            bf16_perturbation,
        ),
        (
            "compiled attack: a compiled PGD attack with frozen weights against one with weights requiring grad",
            True,
            compiled_attack,
        ),
    ]
    ok = run_checks(checks)
    if not ok:
        print(f"the runs' folders are kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
