"""One process of a W-process CPU (gloo) VATT training step; ``test_distributed.py`` runs it as a script.

Every process builds the same model (same seed) and the same global batch, keeps its own slice of B clips,
runs forward + VattLoss + backward, averages the gradients over processes as DDP does, and saves the
outputs, loss terms, gradients and batch-norm running statistics (in float32 and in float64) for the test
to compare with the 1-process run on the whole batch. A last run wraps the model in DistributedDataParallel,
as the training script does through Accelerate, and lets DDP average the gradients.
"""

import argparse

import torch
import torch.distributed as dist

import vatt
from vatt.losses import VattLoss

P, L = 3, 6


def global_batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    lengths = torch.randint(0, L + 1, (n, P), generator=g)
    lengths[:, 0].clamp_(min=1)
    lengths[3, 1:] = 0  # a clip with a single caption
    audio_mask = torch.ones(n)
    audio_mask[1] = 0.0  # clips without audio / text sit unevenly across the two halves
    text_mask = torch.ones(n)
    text_mask[[0, 2]] = 0.0
    return {
        "video": torch.rand(n, 4, 3, 32, 32, generator=g) * 2 - 1,
        "audio": torch.rand(n, 1280, generator=g) * 2 - 1,
        "text_ids": torch.randint(2, 100, (n, P, L), generator=g),
        "text_lengths": lengths,
        "audio_mask": audio_mask,
        "text_mask": text_mask,
    }


def step(rank: int, world: int, batch: int, dtype: torch.dtype, ddp: bool = False) -> dict:
    torch.manual_seed(0)
    model = vatt.create_model("vatt_test").to(dtype)
    model.train()
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp and world > 1 else model
    data = {k: v.to(dtype) if v.is_floating_point() else v for k, v in global_batch(batch * world).items()}
    b = {k: v[rank * batch : (rank + 1) * batch] for k, v in data.items()}
    out = net(b["video"], b["audio"], b["text_ids"], b["text_lengths"])
    losses = VattLoss()(**out, text_lengths=b["text_lengths"], audio_mask=b["audio_mask"], text_mask=b["text_mask"])
    losses["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1 and not ddp:
        for g in grads.values():  # what DDP's gradient averaging does
            dist.all_reduce(g)
            g /= world
    return {
        "losses": {k: v.item() for k, v in losses.items()},
        "outputs": {k: v.detach() for k, v in out.items()},
        "grads": grads,
        "buffers": {n: b_.detach().clone() for n, b_ in model.named_buffers()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4, help="clips per process")
    ap.add_argument("--init-file", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.world > 1:
        dist.init_process_group("gloo", init_method=f"file://{args.init_file}", rank=args.rank, world_size=args.world)
    result = {str(dt): step(args.rank, args.world, args.batch, dt) for dt in (torch.float32, torch.float64)}
    result["ddp"] = step(args.rank, args.world, args.batch, torch.float64, ddp=True)  # the real wrapper
    torch.save(result, f"{args.out}/rank{args.rank}_world{args.world}.pt")
    if args.world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
