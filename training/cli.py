"""`fasland train` and `fasland data`: the parsers; the work is training.commands (fasland/cli.py dispatches)."""
from training.data.protocols import PROTOCOLS
from training.names import METHODS, PRESETS


def register(sub) -> None:
    p = sub.add_parser("train", help="train ERM / SAM / GAC-FAS / RFM on the source domains of a protocol",
                       description="Train one method on a protocol's source domains; rerunning resumes from the last epoch.")
    p.add_argument("--protocol", required=True, choices=list(PROTOCOLS), help="source domains 2 target (training.data.protocols)")
    p.add_argument("--method", required=True, choices=METHODS, help="the training method")
    p.add_argument("--data", default=None, help="'synth' (default: the embedded SynthFAS) or the root of the real datasets")
    p.add_argument("--preset", default="demo", choices=PRESETS, help="demo (2-core CPU) or paper (the GAC-FAS recipe)")
    p.add_argument("--config", default=None, help="YAML file whose sections override the preset (data, model, hparams, train)")
    p.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the preset's); a larger value on a finished run continues it")
    p.add_argument("--keep-checkpoints", type=int, default=None, metavar="N",
                   help="keep the trajectory checkpoint of every N-th epoch (epoch 0 and the last always); default: the preset's train.save_every")
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the preset's)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's)")
    p.add_argument("--pretrained", default=None, help="a local torchvision resnet18 state_dict (nothing downloads)")
    p.add_argument("--warm-from", default=None, metavar="RUN_DIR",
                   help="start from the train.minimizer_warming plain-ERM epochs of this run (e.g. the ERM run of the same "
                        "config) instead of training them again; the result is bit-identical")
    p.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(run=run_train)

    p = sub.add_parser("data", help="write the SynthFAS cache and a contact sheet",
                       description="fasland data synth --out DIR: SynthFAS arrays and contact_sheet.png.")
    p.add_argument("kind", choices=["synth"], help="the dataset to write")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="SynthFAS seed")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run_data)


def run_train(args) -> int:
    from training.commands import train, train_summary

    metrics = train(args.protocol, args.method, args.out, preset=args.preset, config=args.config, data=args.data,
                    image_size=args.image_size, epochs=args.epochs, seed=args.seed, pretrained=args.pretrained,
                    keep_checkpoints=args.keep_checkpoints, warm_from=args.warm_from, device=args.device, threads=args.threads)
    print(train_summary(metrics, args.method, args.protocol, args.out))
    return 0


def run_data(args) -> int:
    from training.commands import data_synth

    for path in data_synth(args.out, image_size=args.image_size, seed=args.seed):
        print(path)
    return 0
