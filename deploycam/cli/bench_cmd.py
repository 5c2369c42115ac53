"""``deploycam bench``: latency and memory of every runtime and method against plain inference."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from deploycam.cli.args import check_device, check_output_dir, check_positive

#: the models --models accepts: deploycam.bench.cases.MODELS's keys, listed here so --help needs no torch
#: (tests/test_bench.py checks the two agree)
BENCH_MODELS = ("resnet50", "mobilenet_v3_large", "vgg16", "efficientnet-lite0")
#: deploycam.bench.cases.EXPORTED_RUNTIMES and CUDA_RUNTIMES, listed here for the same reason
EXPORTED_RUNTIMES = ("torchscript", "onnxruntime", "aoti", "openvino", "opencv")
CUDA_RUNTIMES = ("eager-graphs", "onnxruntime-graphs")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time explanations against plain inference and peer libraries")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--models", nargs="+", default=None, choices=BENCH_MODELS, metavar="MODEL",
                   help=f"models to run (default all: {', '.join(BENCH_MODELS)})")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default 1 8)")
    p.add_argument("--quick", action="store_true",
                   help="EfficientNet-Lite0 and ResNet-50, batch 1, fewer rounds, no memory (30 s on 2 quiet cores, exports included)")
    p.add_argument("--rounds", type=int, default=None, help="timed runs per case (median reported)")
    p.add_argument("--no-peers", action="store_true", help="skip pytorch-grad-cam, torchcam and Captum")
    p.add_argument("--runtimes", nargs="+", default=None, choices=EXPORTED_RUNTIMES + CUDA_RUNTIMES, metavar="RUNTIME",
                   help=f"runtimes to time besides eager (default all: {', '.join(EXPORTED_RUNTIMES)}, and on CUDA "
                        f"{', '.join(CUDA_RUNTIMES)}: CUDA graphs of the eager explainer and of ONNX Runtime; "
                        "--quick: all but aoti, whose packages compile for about a minute each)")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement (a subprocess per case)")
    p.add_argument("--out", default=".", help="directory for bench.json and bench.png")
    p.add_argument("--workdir", default=None, help="where exported graphs are cached (default: a temp dir)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for batch in args.batches or ():
        check_positive("--batches", batch)
    check_positive("--rounds", args.rounds)
    check_output_dir(args.out)
    if args.workdir:
        check_output_dir(args.workdir)
    device = check_device(args.device)

    from deploycam.bench import report
    from deploycam.bench.cases import MODELS, Workbench, all_cases
    from deploycam.bench.runner import environment, run_cases
    models = args.models or (["efficientnet-lite0", "resnet50"] if args.quick else list(MODELS))
    batches = args.batches or ([1] if args.quick else [1, 8])
    rounds = args.rounds or (5 if args.quick else 15)
    memory = not (args.no_memory or args.quick)
    runtimes = args.runtimes or [rt for rt in EXPORTED_RUNTIMES + CUDA_RUNTIMES if not (args.quick and rt == "aoti")]
    cases = all_cases(models, batches, [device], peers=not args.no_peers, runtimes=runtimes)
    env = environment()
    print(f"{len(cases)} cases, {rounds} rounds each, torch {env['torch']}, {env['threads']} threads, "
          f"{env.get('gpu', env['cpu'])}", file=sys.stderr)
    workdir = args.workdir or tempfile.mkdtemp(prefix="deploycam-bench-")
    results = run_cases(cases, Workbench(workdir), rounds=rounds, warmup=2, memory=memory,
                        progress=lambda name: print(f"  {name}", file=sys.stderr, flush=True))
    print(report.table(results))
    os.makedirs(args.out, exist_ok=True)
    report.write_json(os.path.join(args.out, "bench.json"), results, env)
    report.write_png(os.path.join(args.out, "bench.png"), results, env)
    print(f"wrote {os.path.join(args.out, 'bench.json')} and bench.png")
    return 0
