"""``qca-tf``: the command line. Thin click commands: parse, build configs, call the library.

Installed as ``qca_tf.cli``; the top-level ``cli.py`` runs it from a checkout. TensorFlow is imported inside the
commands, so ``qca-tf --help`` answers at once. A user mistake (a
:class:`qca_tf.errors.QcaError`) ends with one ``Error: ...`` line and exit code 1.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import click

from qca_tf import __version__
from qca_tf.config import (DEFAULT_LOSS, LOSSES, MATCH_DISTANCE_UM, NORMALIZATIONS, OPTIMIZERS, PRECISIONS, PRESETS,
                            TTA_CHOICES, DataConfig, InferenceConfig, PostprocessConfig, TrainConfig)
from qca_tf.errors import QcaError

log = logging.getLogger("qca_tf")
# Defaults shown in --help come from the configs, so the two cannot disagree.
_T, _D, _P, _I = TrainConfig(), DataConfig(), PostprocessConfig(), InferenceConfig()


def _tensorflow() -> None:
    """Import TensorFlow for a command that needs it, without its C++ start-up chatter."""
    from qca_tf.runtime import init_tensorflow

    init_tensorflow()


def _progress() -> bool:
    """Progress bars only on a terminal (a log file or pipe gets none)."""
    from qca_tf.runtime import progress_enabled

    return progress_enabled()


def flag_message(message: str, typed: list[str]) -> str:
    """``invalid SECTION.KEY: ...`` (a config check) as ``invalid --FLAG: ...`` when the
    user typed that flag (``typed``: the command's arguments); other messages unchanged
    (a value from a file keeps its config key)."""
    import re

    m = re.match(r"invalid ([a-z]+)\.([a-z0-9_]+): ", message)
    if not m:
        return message
    from qca_tf.config import flag_for

    flag = flag_for(m[1], m[2])
    if not any(a == flag or a.startswith(flag + "=") for a in typed):
        return message
    return f"invalid {flag}: {message[m.end():]}"


#: The group's logging flags, accepted before or after the command's name
LOG_FLAGS = frozenset({"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"})


class QcaGroup(click.Group):
    """Turns library errors and bad flags into one-line messages instead of tracebacks
    or usage blocks; a config check failing on a flag the user typed names that flag,
    not the internal key."""

    def invoke(self, ctx: click.Context):
        # the arguments after the group's own (click 8 keeps the command name apart)
        typed = [str(a) for a in (*getattr(ctx, "_protected_args", ()), *ctx.args)]
        try:
            return super().invoke(ctx)
        except QcaError as exc:
            raise click.ClickException(flag_message(str(exc), typed)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; run the same command again to resume") from None
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # -v / -q are the group's, but people type them after the command too
        # (qca-tf predict STACK -v): moved in front of it, up to a literal "--"
        end = args.index("--") if "--" in args else len(args)
        moved = [a for a in args[:end] if a in LOG_FLAGS]
        rest = [a for a in args[:end] if a not in LOG_FLAGS] + args[end:]
        return super().parse_args(ctx, moved + rest)

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:  # a bad option of the group itself (qca-tf --bogus)
            raise _one_line(exc) from None


#: click >= 8.2 shows the help of a command typed without arguments through this error
_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(exc: click.UsageError) -> click.UsageError:
    """A bad flag or argument as one ``Error:`` line, like every other mistake: the help
    pointer goes into the line instead of click's usage block above it (exit code 2).
    ``qca-tf`` typed alone still shows the help."""
    if isinstance(exc, _NO_ARGS_HELP):
        return exc
    message = " ".join(exc.format_message().split())
    if exc.ctx is not None:
        message = f"{message} (see '{exc.ctx.command_path} --help')"
    return click.UsageError(message)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("qca_tf")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # tifffile reports odd files on its own logger; our one-line errors say what matters (-v shows it)
    tiff_log = logging.getLogger("tifffile")
    tiff_log.handlers[:] = [handler] if verbose else [logging.NullHandler()]
    tiff_log.propagate = False
    # Python warnings (Keras, TensorFlow, NumPy) and TensorFlow's own Python logger: -v shows them
    logging.captureWarnings(True)
    for name in ("py.warnings", "tensorflow", "absl"):
        lib_log = logging.getLogger(name)
        lib_log.handlers[:] = [handler] if verbose else [logging.NullHandler()]
        lib_log.propagate = False


@click.group(cls=QcaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qca-tf")
@click.option("-v", "--verbose", count=True, help="More detail in the log.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """QCANet for 3D time-lapse stacks of nuclei: NSN + NDN + watershed -> instance labels."""
    _setup_logging(verbose, quiet)


def _channel_option(f):
    return click.option("--channel", "channels", type=click.IntRange(0), multiple=True, metavar="N",
                        help="Channel of multi-channel files (counted from 0) holding the nuclei; repeat it "
                             "for a model trained on several channels.")(f)


#: --tta of predict and bundle: click compares strings, the commands take int(value).
_TTA = click.Choice([str(n) for n in TTA_CHOICES])


def _positive_voxel(ctx, param, value):
    """--voxel-size X Y Z: three positive finite micrometres, refused by the flag's name otherwise."""
    if value:
        for axis, v in zip("xyz", value):
            if not (math.isfinite(v) and v > 0):
                raise click.BadParameter(f"{axis}={v:g} must be a positive number of micrometres (X Y Z)")
    return value


def _voxel_option(f):
    return click.option("--voxel-size", nargs=3, type=float, default=None, metavar="X Y Z", callback=_positive_voxel,
                        help="Voxel size in micrometres (x y z); overrides the files' metadata.")(f)


def _finite_offset(ctx, param, value):
    """--annotation-offset Z Y X: three finite micrometres, refused by the flag's name otherwise."""
    if value:
        for axis, v in zip("zyx", value):
            if not math.isfinite(v):
                raise click.BadParameter(f"{axis}={v:g} must be a finite number of micrometres (Z Y X)")
    return value


def _offset_option(default, hint: str = ""):
    """--annotation-offset of predict and bundle (PostprocessConfig.annotation_offset_um)."""
    return click.option("--annotation-offset", nargs=3, type=float, default=default, metavar="Z Y X",
                        callback=_finite_offset, show_default=default is not None,
                        help="Where the training annotation lies relative to its image, in µm (z y x; "
                             "qca_tf.labels.annotation_offset measures it): the labels are moved by it so that "
                             f"they follow the annotation's frame; 0 0 0 keeps them on the image{hint}.")


# ------------------------------------------------------------------------- synth


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--timepoints", "-t", default=1, show_default=True, type=click.IntRange(1), help="Time points.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--shape", nargs=3, type=click.IntRange(4), default=(24, 96, 96), show_default=True,
              metavar="Z Y X", help="Stack size in voxels.")
@click.option("--nuclei", default=8, show_default=True, type=click.IntRange(1), help="Nuclei at the first time point.")
@click.option("--touching-pairs", default=None, type=click.IntRange(0),
              help="Pairs of touching nuclei [min(2, nuclei // 2)].")
@click.option("--polar-bodies", default=1, show_default=True, type=click.IntRange(0), help="Polar bodies (not in the ground truth).")
@click.option("--voxel-size", nargs=3, type=float, default=(0.8, 0.8, 1.75), show_default=True, metavar="X Y Z",
              callback=_positive_voxel, help="Voxel size in micrometres (x y z).")
def synth(out: Path, timepoints: int, seed: int, shape, nuclei: int, touching_pairs, polar_bodies: int,
          voxel_size) -> None:
    """Write a synthetic embryo time series with ground truth to OUT.

    OUT/images/, OUT/nsn/, OUT/ndn/ and OUT/labels/ get one TIFF per time point
    with the same names.
    """
    from qca_tf import synthetic
    from qca_tf.io import VoxelSize

    cfg = synthetic.SynthConfig(shape=tuple(shape), voxel_size=tuple(voxel_size), n_nuclei=nuclei,
                                touching_pairs=min(2, nuclei // 2) if touching_pairs is None else touching_pairs,
                                timepoints=timepoints, polar_bodies=polar_bodies, seed=seed)
    series = synthetic.make_series(cfg)
    names = synthetic.write_dataset(out, series, VoxelSize.from_xyz(voxel_size))
    counts = ", ".join(str(int(tp.labels.max())) for tp in series)
    click.echo(f"wrote {len(names)} time point(s) to {out} (nuclei per time point: {counts})")


# ------------------------------------------------------------------------- train


@main.command()
@click.argument("network", type=click.Choice(list(PRESETS)))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Dataset folder: images/ + nsn/ + ndn/ (or labels/), or images_raw/ + images_nsn/ + images_ndn/.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to write (config.json, weights.h5, epochs.csv).")
@click.option("--epochs", type=click.IntRange(1), default=None, help=f"Epochs [{_T.epochs}].")
@click.option("--patch", type=click.IntRange(2), multiple=True, metavar="P",
              help=f"Crop size on the isotropic grid: one value (cube) or three (z y x) [{_D.patch[0]}].")
@click.option("--depth", type=click.IntRange(1, 5), default=None, help="Down/up samplings (preset's).")
@click.option("--init-channels", type=click.IntRange(1), default=None, help="Channels of the first conv (preset's).")
@click.option("--kernel-size", type=click.Choice(["3", "5", "7"]), default=None, help="Kernel size (preset's).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
              help="Optimizer [nsn, unet3d: sgd; ndn: adam].")
@click.option("--lr", type=float, default=None, help=f"SGD learning rate [{_T.sgd_lr}].")
@click.option("--momentum", type=float, default=None, help=f"SGD momentum [{_T.sgd_momentum}].")
@click.option("--lr-decay", type=float, default=None,
              help=f"Factor applied to the learning rate when the validation metric stops improving [{_T.lr_decay}].")
@click.option("--lr-patience", type=click.IntRange(1), default=None,
              help=f"Epochs without a new best validation metric before the learning rate decays [{_T.lr_patience}].")
@click.option("--adam-alpha", type=float, default=None, help=f"Adam step size [{_T.adam_alpha}].")
@click.option("--adam-beta1", type=float, default=None, help=f"Adam beta1 [{_T.adam_beta1}].")
@click.option("--adam-beta2", type=float, default=None, help=f"Adam beta2 [{_T.adam_beta2}].")
@click.option("--adam-epsilon", type=float, default=None, help=f"Adam epsilon [{_T.adam_epsilon}].")
@click.option("--weight-decay", type=float, default=None, help=f"L2 weight decay [{_T.weight_decay}].")
@click.option("--loss", type=click.Choice(LOSSES), default=None,
              help="Loss [auto: " + ", ".join(f"{k}: {v}" for k, v in DEFAULT_LOSS.items()) + "].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help=f"Crops per batch [{_T.batch_size}].")
@click.option("--crops-per-volume", type=click.IntRange(1), default=None, help=f"Crops per training volume per epoch [{_T.crops_per_volume}].")
@click.option("--min-crops-per-epoch", type=click.IntRange(1), default=None,
              help=f"At least this many crops per epoch, however few the volumes [{_T.min_crops_per_epoch}].")
@click.option("--val-fraction", type=float, default=None,
              help=f"Fraction of volumes held out for validation; with one volume, of its x extent [{_D.val_fraction}].")
@click.option("--val-data", type=click.Path(path_type=Path), default=None,
              help="Dataset folder to validate on (then all of --data trains).")
@click.option("--normalization", type=click.Choice(NORMALIZATIONS), default=None,
              help=f"Intensity normalisation, replayed at prediction [{_D.normalization}].")
@click.option("--scale-jitter", type=float, default=None,
              help=f"Random crop scaling by 1 +- this [{_D.scale_jitter}]; 0: off.")
@click.option("--no-rot90", is_flag=True, help="No random 90-degree rotations in xy.")
@click.option("--no-intensity-augment", is_flag=True,
              help="No random gamma, contrast, brightness, z-attenuation and noise.")
@_voxel_option
@_channel_option
@click.option("--seed", type=int, default=None, help=f"Random seed [{_T.seed}].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="auto: mixed_float16 with loss scaling on a GPU, float32 on a CPU [auto].")
@click.option("--distribute", is_flag=True, help="Use all GPUs (tf.distribute.MirroredStrategy).")
@click.option("--params", "params_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="best_params.json of `qca-tf search`: its architecture and optimiser (other flags override).")
@click.option("--init", "init_model", type=str, default=None, metavar="MODEL",
              help="Fine-tune: start from this model's weights (model folder, bundle or name, e.g. embryo-small); "
                   "its architecture, grid and normalisation are kept.")
@click.option("--overwrite", is_flag=True, help="Train again from epoch 1, replacing a finished or unfinished run in OUT.")
def train(network: str, data_dir: Path, out_dir: Path, patch, kernel_size, voxel_size, channels, distribute: bool,
          val_data, normalization, scale_jitter, no_rot90: bool, no_intensity_augment: bool, params_file,
          init_model, overwrite: bool, **opts) -> None:
    """Train NETWORK (nsn, ndn or the 3D U-Net baseline unet3d) on a dataset.

    The best epoch by the validation metric (nsn, unet3d: IoU; ndn: detection
    F-measure) is saved in OUT; rerunning an interrupted command resumes it, and
    rerunning a finished one only reports it (--overwrite trains again). --init
    fine-tunes a trained model (e.g. embryo-small) on your own annotated stacks.
    """
    from qca_tf.config import check_compatible, preset

    model_over = dict(depth=opts.pop("depth"), init_channels=opts.pop("init_channels"),
                      kernel_size=int(kernel_size) if kernel_size else None,
                      input_channels=len(channels) if channels else None)
    task = "ndn" if network == "ndn" else "nsn"
    init = None
    if init_model is not None:
        from qca_tf.errors import ConfigError
        from qca_tf.finetune import check_architecture, initial_model

        if params_file is not None:
            raise ConfigError("--init and --params: give one (fine-tuning keeps the initial model's architecture)")
        init = initial_model(init_model, task)
        model_cfg = check_architecture(init, model_over)
    else:
        model_cfg = preset(network, **model_over)
    defaults = {"task": task}  # the task's optimiser (ndn: adam) comes from TrainConfig
    names = {"lr": "sgd_lr", "momentum": "sgd_momentum"}
    train_kw = {names.get(k, k): v for k, v in opts.items() if v is not None and k != "val_fraction"}
    if params_file is not None:  # a search's best configuration; explicit flags still win
        import dataclasses

        from qca_tf.config import ModelConfig, from_dict, read_json
        from qca_tf.errors import ConfigError

        found = read_json(params_file)
        if found.get("network", network) != network or not {"model", "train"} <= set(found):
            raise ConfigError(f"{params_file}: not the best_params.json of a {network} search "
                              f"(network {found.get('network')!r}, keys {', '.join(sorted(found))})")
        model_cfg = dataclasses.replace(from_dict(ModelConfig, found["model"], "model"),
                                        **{k: v for k, v in model_over.items() if v is not None})
        defaults = {k: v for k, v in from_dict(TrainConfig, found["train"], "train").__dict__.items()}
    train_cfg = TrainConfig(**{**defaults, **train_kw})
    data_kw = {}
    if patch:
        if len(patch) not in (1, 3):
            raise click.BadParameter("give one value (cube) or three (z y x)", param_hint="--patch")
        data_kw["patch"] = tuple(patch) * 3 if len(patch) == 1 else tuple(patch)
    if voxel_size:
        data_kw["voxel_size"] = tuple(voxel_size)
    if opts.get("val_fraction") is not None:
        data_kw["val_fraction"] = opts["val_fraction"]
    if channels:
        data_kw["channels"] = tuple(channels)
    if normalization:
        data_kw["normalization"] = normalization
    if scale_jitter is not None:
        data_kw["scale_jitter"] = scale_jitter
    data_cfg = DataConfig(**data_kw, rot90=not no_rot90, intensity_augment=not no_intensity_augment)
    if init is not None:
        from qca_tf.finetune import recipe_data_config

        data_cfg = recipe_data_config(init, data_cfg, set(data_kw))
    check_compatible(model_cfg, data_cfg)

    _tensorflow()
    from qca_tf.train import train as run_training

    result = run_training(data_dir, out_dir, model_cfg, train_cfg, data_cfg, distribute=distribute, val_data=val_data,
                          overwrite=overwrite, init=init)
    if result.finished:
        click.echo(f"already finished: {len(result.history)} epochs in {result.folder} (--overwrite trains again)")
    click.echo(f"best {result.metric_name} {result.best_metric:.4f} at epoch {result.best_epoch}; "
               f"model folder: {result.folder}")


# ------------------------------------------------------------------------- search


@main.command()
@click.argument("network", type=click.Choice(["nsn", "ndn", "unet3d", "qcanet"]))
@click.option("--trials", required=True, type=int, help="Finished trials (complete or pruned) the study must hold.")
@click.option("--model", "bundle", type=str, default=None, metavar="BUNDLE",
              help="qcanet only: the bundle (folder or name) whose post-processing is tuned, networks fixed.")
@click.option("--voxel-size", nargs=3, type=float, default=None, metavar="X Y Z", callback=_positive_voxel,
              help="qcanet only: voxel size in micrometres (x y z) of the --data images; overrides their metadata.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Training dataset folder [none: a built-in synthetic embryo made in OUT/data]; qcanet: "
                   "images/ + labels/ (instance ground truth), required.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [qca_search_NETWORK]; rerunning the same command resumes it.")
@click.option("--engine", default="optuna", show_default=True, help="optuna or keras-tuner.")
@click.option("--sampler", default="tpe", show_default=True, help="tpe, random or gp (gp needs PyTorch).")
@click.option("--pruner", default="median", show_default=True, help="median, wilcoxon or none.")
@click.option("--storage", default=None, metavar="URL",
              help="Shared study database, e.g. postgresql+psycopg://user:pass@host/db [embedded file in OUT].")
@click.option("--study", "study_name", default=None, help="Study name [NETWORK].")
@click.option("--space", "space_file", type=click.Path(path_type=Path), default=None,
              help="JSON file narrowing ranges or fixing values of the search space.")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes on this machine.")
@click.option("--epochs", type=int, default=6, show_default=True, help="Epochs per trial.")
@click.option("--patch", type=click.IntRange(2), multiple=True, metavar="P",
              help="Crop size: one value (cube) or three (z y x) [32].")
@click.option("--timeout", type=float, default=None, help="Stop starting trials after this many seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samplers and of training.")
@click.option("--max-params", type=int, default=2_000_000, show_default=True,
              help="Networks with more weights are pruned before training.")
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Run the published preset as the first trial.")
@click.option("--keep", type=click.IntRange(1), default=5, show_default=True,
              help="Trials whose weights stay on disk (the best ones).")
def search(network: str, trials: int, bundle, voxel_size, data_dir, out_dir, engine, sampler, pruner, storage,
           study_name, space_file, workers, epochs, patch, timeout, seed, max_params, warm_start, keep) -> None:
    """Bayesian search of NETWORK's ten hyperparameters (architecture + optimiser).

    Writes OUT/best/ (model folder + SavedModel), OUT/best_params.json (for
    `qca-tf train --params`), OUT/trials.csv and OUT/plots/. Rerun to resume; run the
    same command on several machines with --storage to share one study.

    `search qcanet --model BUNDLE --data DIR` tunes the bundle's post-processing
    (thresholds, marker size, minimum volume) on MUCov against DIR/labels/ and writes
    OUT/bundle/ (see docs/search.md).
    """
    if network == "qcanet" or bundle is not None or voxel_size is not None:
        _search_qcanet(network, trials, bundle, voxel_size, data_dir, out_dir, sampler, storage, study_name, timeout,
                       seed, warm_start)
        return
    from qca_tf.search.run import search as run_search
    from qca_tf.search.settings import SearchSettings
    from qca_tf.search.storage import redact

    if patch and len(patch) not in (1, 3):
        raise click.ClickException("--patch: give one value (cube) or three (z y x)")
    out = out_dir or Path(f"qca_search_{network}")
    cfg = SearchSettings(network=network, out=str(out), data=str(data_dir) if data_dir else "", trials=trials,
                         study=study_name or network, engine=engine, sampler=sampler, pruner=pruner,
                         storage=redact(storage) if storage else None, workers=workers, epochs=epochs,
                         patch=(tuple(patch) * 3 if len(patch) == 1 else tuple(patch)) if patch else (32, 32, 32),
                         timeout_s=timeout, seed=seed, max_params=max_params, warm_start=warm_start, keep=keep,
                         space_file=str(space_file) if space_file else None)
    run_search(cfg, storage_url=storage, echo=click.echo, progress=_progress())


_NETWORK_ONLY = ("engine", "pruner", "workers", "epochs", "patch", "space_file", "max_params", "keep")


def _search_qcanet(network, trials, bundle, voxel_size, data_dir, out_dir, sampler, storage, study_name, timeout,
                   seed, warm_start) -> None:
    """`search qcanet`: --model required, options of the network search refused (one line each)."""
    ctx = click.get_current_context()
    if network != "qcanet":
        flag = "--model" if bundle is not None else "--voxel-size"
        raise click.ClickException(f"{flag} applies to `search qcanet` only (search {network} trains networks)")
    if bundle is None:
        raise click.ClickException("search qcanet needs --model BUNDLE (a folder or a name): the networks whose "
                                   "post-processing is tuned")
    for name in _NETWORK_ONLY:
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            flag = next(p.opts[0] for p in ctx.command.params if p.name == name)
            raise click.ClickException(f"{flag} does not apply to `search qcanet` (the networks are fixed; "
                                       "only the post-processing is tuned)")
    from qca_tf.search.postprocess_search import PostSearchSettings, search_postprocess
    from qca_tf.search.storage import redact

    cfg = PostSearchSettings(model=bundle, data=str(data_dir) if data_dir else "",
                             out=str(out_dir or Path("qca_search_qcanet")), trials=trials,
                             study=study_name or "qcanet", sampler=sampler,
                             storage=redact(storage) if storage else None, seed=seed, warm_start=warm_start,
                             timeout_s=timeout, voxel_size=tuple(voxel_size) if voxel_size else None)
    _tensorflow()
    search_postprocess(cfg, storage_url=storage, echo=click.echo)


# ------------------------------------------------------------------------- predict


def _parse_shard(value: str | None) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.ClickException(f"--shard {value!r} is not I/N (e.g. 0/4)") from None
    if not (n >= 1 and 0 <= i < n):
        raise click.ClickException(f"--shard {value!r}: need N >= 1 and 0 <= I < N")
    return (i, n)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--model", "bundle", type=str, default=None, metavar="BUNDLE",
              help="QCANet bundle: a folder (nsn/, ndn/, qcanet.json, e.g. from `qca-tf demo`) or the name of "
                   "an installed model (`qca-tf models` lists them).")
@click.option("--nsn", type=click.Path(path_type=Path), default=None, help="NSN model folder or SavedModel export.")
@click.option("--ndn", type=click.Path(path_type=Path), default=None,
              help="NDN model folder or SavedModel export (without it: connected components of NSN).")
@_voxel_option
@_channel_option
@click.option("--nsn-threshold", type=float, default=None,
              help=f"NSN probability threshold [the bundle's, else {_P.nsn_threshold}].")
@click.option("--ndn-threshold", type=float, default=None,
              help=f"NDN probability threshold [the bundle's, else {_P.ndn_threshold}].")
@click.option("--min-marker-size", type=click.IntRange(0), default=None,
              help=f"Drop NDN components smaller than this many voxels (network grid) "
                   f"[the bundle's, else {_P.min_marker_size}].")
@click.option("--marker-gap", type=click.FloatRange(0), default=None, metavar="UM",
              help=f"Join NDN components separated by at most this gap in µm (fragments of one centre); 0 keeps "
                   f"them apart [the bundle's, else {_P.marker_gap_um:g}].")
@click.option("--min-volume", type=click.FloatRange(0), default=None, metavar="UM3",
              help=f"Drop instances smaller than this volume in µm³ (fragments, not nuclei); 0 keeps all "
                   f"[the bundle's, else {_P.min_volume_um3:g}].")
@_offset_option(default=None, hint=" [the bundle's, else 0 0 0]")
@click.option("--precision", type=click.Choice(PRECISIONS),
              default=PRECISIONS[0], show_default=True, help="auto: mixed_float16 on a GPU; on a CPU, bf16 with the openvino engine where the CPU has bf16 units "
                   "(AMX or AVX512_BF16), else float32.")
@click.option("--tile", nargs=3, type=click.IntRange(1), default=None, metavar="Z Y X",
              help="Force tiles of this core size (network grid voxels).")
@click.option("--max-memory", type=float, default=_I.max_memory_gb, show_default=True,
              help="Memory budget (GB) that decides whole-volume vs tiled prediction.")
@click.option("--batch-size", type=click.IntRange(1), default=_I.batch_size, show_default=True, help="Tiles per batch.")
@click.option("--jit", is_flag=True, help="Compile the networks with XLA (GPU only: ignored on a CPU, where it is "
              "about 10x slower).")
@click.option("--engine", type=click.Choice(["auto", "tensorflow", "openvino"]), default="auto", show_default=True,
              help="auto: OpenVINO on a CPU where it is installed (bf16 on CPUs with AMX/AVX512_BF16), "
                   "TensorFlow on a GPU.")
@click.option("--tta", type=_TTA, default=None,
              help="Test-time augmentation: average the networks over 1 (none), 4 (x/y flips) or 8 (flips and xy "
                   "quarter turns) transforms of each volume; costs as many network passes [the bundle's, else 1].")
@click.option("--save-masks", is_flag=True, help="Also write the NSN and NDN masks (OUT/nsn, OUT/ndn).")
@click.option("--no-quicklook", is_flag=True, help="Skip the per-time-point quick-look PNGs.")
@click.option("--overwrite", is_flag=True, help="Redo time points that are already finished.")
@click.option("--shard", default=None, metavar="I/N", help="Process every N-th time point starting at I (job arrays).")
@click.option("--sequential", is_flag=True, help="Do not overlap reading/watershed with the networks.")
def predict(inputs, out_dir: Path, bundle, nsn, ndn, voxel_size, channels, nsn_threshold, ndn_threshold, min_marker_size,
            marker_gap, min_volume, annotation_offset, precision, tile, max_memory, batch_size, jit, engine, tta, save_masks,
            no_quicklook, overwrite, shard, sequential) -> None:
    """Segment INPUTS (3D TIFFs, 4D t-z-y-x TIFFs or folders) into instance labels and criteria.

    Writes OUT/labels/, OUT/criteria.csv (per time point), OUT/nuclei.csv (per
    nucleus), OUT/plots/ and OUT/run.json. Finished time points are skipped on a
    rerun, so an interrupted job resumes.
    """
    import dataclasses

    from qca_tf.config import InferenceConfig
    from qca_tf.io import VoxelSize

    shard_t = _parse_shard(shard)
    if bundle is None and nsn is None:
        raise click.UsageError("give --model BUNDLE (a folder or a name) or --nsn DIR (and --ndn DIR)")
    from qca_tf.predict import preflight
    from qca_tf.bundle import read_bundle
    from qca_tf.registry import resolve

    meta = read_bundle(resolve(bundle)) if bundle else None
    infer_cfg = InferenceConfig(precision=precision, tile=tuple(tile) if tile else None, max_memory_gb=max_memory,
                                jit=jit, batch_size=batch_size, engine=engine,
                                tta=int(tta) if tta is not None else (meta.tta if meta else 1))
    # inputs, voxel sizes, output folder and memory are checked before TensorFlow and the models load
    preflight(list(inputs), out_dir, model_folder=nsn or (meta.nsn if meta else None),
              channels=tuple(channels), voxel_size=VoxelSize.from_xyz(voxel_size) if voxel_size else None,
              tta=infer_cfg.tta)
    from qca_tf.bundle import load_networks
    from qca_tf.engines import resolve_engine, resolve_inference

    if resolve_engine(infer_cfg.engine) == "tensorflow":
        _tensorflow()  # openvino: TensorFlow loads only for a network not yet in the conversion cache
    from qca_tf.predict import PredictOptions, choose_channels, predict_series, recorded_channel

    infer_cfg = resolve_inference(infer_cfg)
    log.debug("engine %s, precision %s", infer_cfg.engine, infer_cfg.precision)
    nets = load_networks(nsn=nsn, ndn=ndn, bundle=bundle, infer_cfg=infer_cfg)
    overrides = {k: v for k, v in {"nsn_threshold": nsn_threshold, "ndn_threshold": ndn_threshold,
                                   "min_marker_size": min_marker_size, "marker_gap_um": marker_gap,
                                   "min_volume_um3": min_volume,
                                   "annotation_offset_um": tuple(annotation_offset) if annotation_offset else None}.items()
                 if v is not None}
    if overrides:
        nets.postprocess = dataclasses.replace(nets.postprocess, **overrides)
    opts = PredictOptions(save_masks=save_masks, quicklook=not no_quicklook, overwrite=overwrite, shard=shard_t,
                          voxel_size=VoxelSize.from_xyz(voxel_size) if voxel_size else None,
                          channels=choose_channels(nets, tuple(channels)),
                          default_channels=recorded_channel(nets.nsn.info, nets.nsn.model_cfg), pipelined=not sequential,
                          progress=_progress())
    run = predict_series(list(inputs), out_dir, nets, infer_cfg, opts)
    counts = ", ".join(f"{r['name']}: {r['count']}" for r in run.summary_rows[:10]) or "none"
    more = " ..." if len(run.summary_rows) > 10 else ""
    click.echo(f"segmented {len(run.processed)} time point(s), skipped {len(run.skipped)} finished; "
               f"nuclei per time point: {counts}{more}")
    click.echo(f"labels: {out_dir / 'labels'}  criteria: {out_dir / 'criteria.csv'}  plots: {out_dir / 'plots'}")


# ------------------------------------------------------------------------- evaluate


def _metric_table(rows: list[dict], summary: dict) -> str:
    keys = ["iou", "dice", "seg", "mucov", "det_precision", "det_recall", "det_f1", "f1@0.5", "ap@0.5", "ap@0.75"]
    name_w = max([len("time point"), *(len(r["name"]) for r in rows)])
    lines = [f"{'time point':<{name_w}} " + " ".join(f"{k:>13}" for k in keys)]
    for r in rows:
        lines.append(f"{r['name']:<{name_w}} " + " ".join(
            "n/a".rjust(13) if r[k] is None else f"{r[k]:>13.4f}" for k in keys))
    lines.append(f"{'mean (sd)':<{name_w}} " + " ".join(
        (f"{summary[k]['mean']:>6.3f} ({summary[k]['sd']:.3f})" if k in summary else "n/a").rjust(13) for k in keys))
    return "\n".join(lines)


@main.command()
@click.option("--pred", required=True, type=click.Path(path_type=Path), help="Predicted labels: file or folder.")
@click.option("--gt", required=True, type=click.Path(path_type=Path), help="Ground-truth labels (or masks): file or folder.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the metrics as JSON.")
@click.option("--match-distance", type=float, default=MATCH_DISTANCE_UM, show_default=True,
              help="Centre-matching distance (um) for detection precision/recall/F-measure "
                   "(needs the voxel size: --voxel-size or the files' metadata).")
@_voxel_option
def evaluate(pred: Path, gt: Path, json_path, match_distance: float, voxel_size) -> None:
    """Compare predicted instance labels with ground truth: IoU, Dice, SEG, MUCov,
    detection P/R/F and instance matching at IoU 0.5 and 0.75.

    Only detection (centres matched within --match-distance um) needs the voxel size;
    without it (no --voxel-size, no metadata) the other metrics are still computed."""
    from qca_tf.evaluate import evaluate_series
    from qca_tf.io import VoxelSize

    result = evaluate_series(pred, gt, voxel_size=VoxelSize.from_xyz(voxel_size) if voxel_size else None,
                             match_distance_um=match_distance)
    click.echo(_metric_table(result.rows, result.summary))
    if result.detection_note:
        click.echo(f"note: {result.detection_note}")
    if json_path is not None:
        result.write_json(json_path)
        click.echo(f"wrote {json_path}")


# ------------------------------------------------------------------------- export / bundle


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT_DIR.")
def export(model_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Export a trained model folder as a TensorFlow SavedModel (serving signature:
    float32 [batch, z, y, x, 1] -> class probabilities)."""
    _tensorflow()
    from qca_tf.export import export_savedmodel

    path = export_savedmodel(model_dir, out_dir, overwrite=overwrite)
    click.echo(f"SavedModel written to {path}")


@main.command()
@click.option("--nsn", required=True, type=click.Path(path_type=Path), help="NSN model folder.")
@click.option("--ndn", required=True, type=click.Path(path_type=Path), help="NDN model folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder.")
@click.option("--nsn-threshold", type=float, default=_P.nsn_threshold, show_default=True)
@click.option("--ndn-threshold", type=float, default=_P.ndn_threshold, show_default=True)
@click.option("--min-marker-size", type=click.IntRange(0), default=_P.min_marker_size, show_default=True)
@click.option("--marker-gap", type=click.FloatRange(0), default=_P.marker_gap_um, show_default=True, metavar="UM",
              help="Join NDN components separated by at most this gap in µm; 0 keeps them apart.")
@click.option("--min-volume", type=click.FloatRange(0), default=_P.min_volume_um3, show_default=True, metavar="UM3",
              help="Drop instances smaller than this volume in µm³.")
@click.option("--description", default="", help="What data the networks learnt from (shown by `qca-tf models`).")
@click.option("--voxel-size", nargs=3, type=float, default=None, metavar="X Y Z", callback=_positive_voxel,
              help="Voxel size (um, x y z) of the training images (shown by `qca-tf models`).")
@click.option("--tta", type=_TTA, default="1", show_default=True,
              help="Test-time augmentation `qca-tf predict` uses with this bundle by default: the one the "
                   "thresholds were chosen with.")
@_offset_option(default=_P.annotation_offset_um)
def bundle(nsn: Path, ndn: Path, out_dir: Path, nsn_threshold, ndn_threshold, min_marker_size, marker_gap, min_volume,
           description, voxel_size, tta, annotation_offset) -> None:
    """Combine an NSN and an NDN model folder and post-processing parameters into one
    QCANet bundle for `qca-tf predict --model` (weights only: no optimiser state)."""
    from qca_tf.config import PostprocessConfig

    _tensorflow()
    from qca_tf.bundle import make_bundle

    post = PostprocessConfig(nsn_threshold=nsn_threshold, ndn_threshold=ndn_threshold,
                             min_marker_size=min_marker_size, min_volume_um3=min_volume, marker_gap_um=marker_gap,
                             annotation_offset_um=tuple(annotation_offset))
    make_bundle(out_dir, nsn, ndn, post, description=description,
                voxel_size_um=tuple(voxel_size) if voxel_size else None, tta=int(tta))
    click.echo(f"bundle written to {out_dir}")


@main.command()
def models() -> None:
    """List the named models `qca-tf predict --model NAME` accepts: shipped with
    qca_tf, or in the folders of $QCA_TF_MODELS."""
    from qca_tf.registry import ENV_VAR, PACKAGE_ROOT, list_models

    entries = list_models()
    if not entries:
        click.echo(f"no named models installed (none in {PACKAGE_ROOT} or ${ENV_VAR})")
    for entry in entries:
        click.echo(entry.line())


# ------------------------------------------------------------------------- demo


@main.command()
@click.option("--out", "out_dir", default=Path("qca_demo"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--timepoints", default=6, show_default=True, type=click.IntRange(1), help="Test time points.")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(1), help="Training epochs per network.")
def demo(out_dir: Path, seed: int, timepoints: int, epochs: int) -> None:
    """Synthetic embryo -> train NSN + NDN -> predict -> evaluate, 1.5 to 9 minutes on a 2-core CPU."""
    import time

    start = time.monotonic()
    _tensorflow()
    from qca_tf.config import MATCH_DISTANCE_UM
    from qca_tf.demo import run_demo

    res = run_demo(out_dir, seed=seed, timepoints=timepoints, epochs=epochs)
    s = res.summary
    minutes, seconds = divmod(int(round(time.monotonic() - start)), 60)
    wrong = [(n, p, t) for n, p, t in res.counts if p != t]
    click.echo(f"demo finished in {minutes} min {seconds:02d} s: {timepoints} test time point(s) of a synthetic embryo "
               f"the networks never saw")
    click.echo("  nuclei per time point, predicted/true: "
               + ", ".join(f"{n} {p}/{t}" for n, p, t in res.counts)
               + ("  (all right)" if not wrong else f"  (wrong at {len(wrong)} time point(s))"))
    click.echo("  mean over the test time points (1 is perfect):")
    rows = [("IoU", "iou", "voxel overlap of all predicted and all true nuclei (good: above 0.8)"),
            ("SEG", "seg", "per true nucleus, its best overlap (IoU) with a predicted one; misses and splits "
                           "lower it (good: above 0.7)"),
            ("MUCov", "mucov", "per predicted nucleus, its best overlap with a true one; false nuclei and "
                               "fusions lower it (good: above 0.7)"),
            ("detection F", "det_f1", f"nuclei found, centres within {MATCH_DISTANCE_UM:g} um, harmonic mean of "
                                      "precision and recall (good: above 0.9)")]
    for label, key, meaning in rows:
        value = s.get(key, {}).get("mean")
        click.echo(f"    {label:<12} {'n/a' if value is None else f'{value:.3f}'}  {meaning}")
    out, pred = res.out, res.prediction
    click.echo(f"outputs in {out}:")
    outputs = ((out / "data" / "train", "training embryos: images/, nsn/, ndn/ masks, labels/ (ground truth)"),
                       (out / "data" / "test", "test embryo, same layout"),
                       (res.bundle, f"the trained QCANet bundle (nsn/, ndn/, qcanet.json); use it with: "
                                    f"qca-tf predict IMAGES --model {res.bundle} --out DIR"),
                       (pred / "labels", "predicted instance labels, one TIFF per time point"),
                       (pred / "criteria.csv", "per time point: nuclear count, volume and surface statistics"),
                       (pred / "nuclei.csv", "per nucleus: time point, volume, surface, diameter, sphericity, centroid"),
                       (pred / "plots" / "timeseries.png", "count, volume and surface over time"),
                       (pred / "plots" / "quicklook", "per time point: max projections with each nucleus outlined"),
                       (pred / "run.json", "what produced the prediction (versions, parameters, timings)"),
                       (out / "evaluation.json", "every metric per time point, with mean and sd "
                                                 "(the format of qca-tf evaluate --json)"))
    width = max(len(str(path)) for path, _ in outputs)
    for path, what in outputs:
        click.echo(f"  {str(path):<{width}}  {what}")


if __name__ == "__main__":  # pragma: no cover
    main()
