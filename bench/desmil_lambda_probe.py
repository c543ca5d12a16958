"""How far do DESMIL's sample weights move from uniform at each λ_p? The inner weight loop alone
(models/layers/stable_weights.DecorrelationWeights, memory 128) on the interests a trained run
gives for shuffled training batches; prints the effective sample size (1 / (B Σ w²), as a share of
B), B · max w and the weighted / equal-weight RFF-HSIC ratio (5 Fourier draws), averaged over
batches 10–29 (after the memory's warm-up). The λ_p of configs/desmil_shift_lambda_p0.1.yaml was
chosen from its output.

    python bench/desmil_lambda_probe.py runs/retrieval/comirec_sa_shift_seed0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished ComiRec-SA / DESMIL run directory")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[70.0, 1.0, 0.1, 0.01, 0.001])
    args = parser.parse_args(argv)
    from recsys.data_pipelines.loader import SampleLoader
    from recsys.models.layers.stable_weights import DecorrelationWeights, fourier_draws
    from recsys.runner import load_run, open_dataset
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config, net = load_run(args.run)
    dataset = open_dataset(config, build=False, progress=False)
    loader = SampleLoader(dataset, "train", 128, max_length=config.data.max_length, shuffle=True, seed=0)
    net.eval()
    features = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= 30:
                break
            features.append(net.user_interests(batch).interests.reshape(batch.size, -1))
    for lam in args.lambdas:
        width = features[0].shape[1]                                  # K · D
        learner = DecorrelationWeights(width, width // config.model.init_args.get("num_interests", 4),
                                       lambda_p=lam, memory=128)
        ess, top, ratio = [], [], []
        for f in features:
            w = learner(f)
            n = f.shape[0]
            ess.append(float(1 / (n * (w ** 2).sum())))
            top.append(float(n * w.max()))
            draws = [fourier_draws(f.shape[1], 1) for _ in range(5)]
            uniform = torch.full((n,), 1 / n)
            ratio.append(np.mean([float(learner.hsic(f, w, d)) for d in draws])
                         / np.mean([float(learner.hsic(f, uniform, d)) for d in draws]))
        print(f"lambda_p {lam:g}: ESS/B {np.mean(ess[10:]):.4f}  B*max w {np.mean(top[10:]):.3f}  "
              f"HSIC weighted/uniform {np.mean(ratio[10:]):.3f}")


if __name__ == "__main__":
    main()
