"""Training throughput and peak memory of the default DiScoFormer, beside a score-only reference.

    python benchmarks/train_throughput.py [--steps 30] [--repeats 3] [--device cpu|cuda]

Each configuration runs in its own process (so peak memory is its own): the default config
(score + density regression + consistency on a quarter of each batch) and, as the reference, the
same model trained with the score loss alone, which shows what the density head costs.
Molecules/s is the median over ``--repeats`` windows of ``--steps`` steps after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from _common import SHARED_DATA, write_results

CONFIGS = {
    "discoformer (score + density + consistency)": {},
    "reference: score loss only": {"nll": 0.0, "consistency": 0.0},
}


def run_one(loss_overrides: dict, steps: int, repeats: int, device: str) -> dict:
    import torch

    from molgen.data import locate_qm9, prepare_dataset
    from molgen.training.losses import LossWeights
    from molgen.training.trainer import TrainConfig, Trainer, TrainingData

    files = locate_qm9(SHARED_DATA)
    dataset, _ = prepare_dataset(files.csv, files.test_idx)
    data = TrainingData.combine([dataset], ["qm9"])
    config = TrainConfig(device=device, loss={**LossWeights().to_dict(), **loss_overrides})
    trainer = Trainer(config, data, "/tmp/molgen-throughput")
    order = trainer.epoch_order(0)
    batch = config.batch_size

    def window(first: int) -> float:
        start = time.perf_counter()
        for index in range(first, first + steps):
            trainer.train_step(order[index * batch : (index + 1) * batch])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - start)

    window(0)  # warm-up
    rates = [window((k + 1) * steps) for k in range(repeats)]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "molecules_per_second": statistics.median(rates),
        "all_repeats": rates,
        "peak_memory_mib": peak,
        "parameters": trainer.model.num_parameters(),
        "batch_size": batch,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(json.loads(args.single), args.steps, args.repeats, args.device)))
        return
    results = {}
    for name, overrides in CONFIGS.items():
        command = [sys.executable, __file__, "--single", json.dumps(overrides), "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [
        (name, args.device, f"{r['parameters']:,}", f"{r['molecules_per_second']:,.0f}", f"{r['peak_memory_mib']:,.0f}")
        for name, r in results.items()
    ]
    write_results(f"train_throughput_{args.device.split(':')[0]}", {"device": args.device, "results": results}, rows,
                  ("training config", "device", "parameters", "molecules/s (median)", "peak memory (MiB)"))


if __name__ == "__main__":
    main()
