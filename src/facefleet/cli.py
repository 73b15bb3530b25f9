"""The ``facefleet`` command. Errors are one line on stderr and a non-zero exit, never a traceback
(set FACEFLEET_DEBUG=1 to see one)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from facefleet import __version__
from facefleet.errors import FacefleetError

log = logging.getLogger("facefleet")

EXIT_ERROR = 1
EXIT_USAGE = 2

# Subcommands that live with their feature: each module defines ``register(subparsers)``.
# Those modules must import heavy or optional packages (boto3, awscrt, matplotlib) lazily,
# inside their handlers, so a device install without the cloud extras still starts.
EXTENSIONS: tuple[str, ...] = (
    "facefleet.runtime.hailo",
    "facefleet.cloud.compiler.cli",
    "facefleet.component.cli",
    "facefleet.cloud.fleet_cli",
    "facefleet.snapshot",
    "facefleet.cloud.stores", "facefleet.cloud.report",  # after fleet_cli: they extend 'events'
    "facefleet.cloud.erase",  # extends 'gallery'
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other error
        sys.stderr.write(f"facefleet: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- gallery ---------------------------------------------------------------------------------
def cmd_gallery_add(args) -> int:
    from facefleet.config import load_config
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import enroll_images, load_detector
    from facefleet.runtime import create_backend

    for img in args.images:  # fail before loading or creating anything
        if not Path(img).is_file():
            raise FacefleetError(f"image not found: {img}")
    cfg = load_config(args.config)
    backend = create_backend(cfg.models.backend)
    detector = load_detector(backend, args.detector or cfg.models.detector, cfg)
    gallery = Gallery.open(args.gallery, create=True)
    added = enroll_images(gallery, detector, args.name, args.images)
    print(f"{args.name}: {added} face(s) added, {len(gallery.info(args.name)['crops'])} in total")
    return 0


def cmd_gallery_list(args) -> int:
    from facefleet.recognition.gallery import Gallery

    gallery = Gallery.open(args.gallery)
    rows = [{"name": n, "crops": len(gallery.info(n)["crops"]), "added": gallery.info(n).get("added")} for n in gallery.names()]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['name']}\t{r['crops']}")
    return 0


def cmd_gallery_pack(args) -> int:
    """Folder of people's photos (one sub-folder per identity) -> a gallery archive of aligned
    crops and names, no embeddings: every device embeds it with its own model."""
    from facefleet.config import load_config
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import enroll_images, load_detector
    from facefleet.runtime import create_backend
    from facefleet.sources import IMAGE_EXTS

    photos = Path(args.photos)
    if not photos.is_dir():
        raise FacefleetError(f"photos folder not found: {photos}")
    people = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
              for d in sorted(photos.iterdir()) if d.is_dir()}
    people = {k: v for k, v in people.items() if v}
    if not people:
        raise FacefleetError(f"{photos}: no sub-folders with photos (one folder per identity)")
    cfg = load_config(args.config)
    detector = load_detector(create_backend(cfg.models.backend), args.detector or cfg.models.detector, cfg)
    with tempfile.TemporaryDirectory(prefix="facefleet-pack-") as tmp:
        g = Gallery.open(Path(tmp) / "g", create=True)
        for name, files in people.items():
            enroll_images(g, detector, name, files)
        n = g.export_archive(Path(args.out))
    print(f"{args.out}: {n} identities, {sum(len(v) for v in people.values())} photos")
    return 0


def cmd_gallery_merge(args) -> int:
    from facefleet.recognition.gallery import Gallery

    gallery = Gallery.open(args.gallery, create=True)
    added = gallery.merge_archive(Path(args.archive))
    print(f"{added} crop(s) added; {len(gallery)} identities")
    return 0


def cmd_gallery_remove(args) -> int:
    from facefleet.recognition.gallery import Gallery

    gallery = Gallery.open(args.gallery)
    gallery.remove(args.name)
    print(f"removed {args.name}")
    return 0


# ---- run / demo ------------------------------------------------------------------------------
def _build_pipeline(args, cfg, backends):
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import gallery_index, load_models
    from facefleet.recognition.pipeline import FacePipeline

    gallery = Gallery.open(args.gallery)
    models = load_models(backends.get(cfg.models.backend), cfg, args.detector, args.recognizer)
    index = gallery_index(gallery, models.recognizer)
    log.info("detector %s (%s), recognizer %s (%s), gallery %d identities",
             models.detector.spec.name, models.detector.spec.fingerprint,
             models.recognizer.spec.name, models.recognizer.fingerprint, len(index))
    return FacePipeline(models.detector, models.recognizer, index, cfg)


def run_source(pipeline, source, publish: Callable) -> int:
    """Feed every frame of ``source`` through ``pipeline``; publish each event. Returns events."""
    n = 0
    try:
        for frame in source:
            for ev in pipeline.process(frame):
                publish(ev)
                n += 1
    finally:
        for ev in pipeline.flush():
            publish(ev)
            n += 1
        source.close()
    return n


def cmd_run(args) -> int:
    if args.config and not getattr(args, "plain", False):  # local mode: the component, local control plane
        return _run_component(args)
    from facefleet.config import ComponentConfig, load_config
    from facefleet.runtime import BackendPool
    from facefleet.sources import open_source
    from facefleet.transport.jsonl import JsonlSink

    cfg = load_config(args.config, ComponentConfig)  # the demo's pipeline settings; a plain run has none
    source = open_source(args.source)
    backends = BackendPool()
    try:
        pipeline = _build_pipeline(args, cfg, backends)
        sink = JsonlSink(args.events)
        try:
            publish = sink.publish
            if getattr(args, "annotate", None):  # draw plan and faces on every frame into a clip
                from facefleet.annotate import annotate_run

                source, publish = annotate_run(args.annotate, source, pipeline, publish)
            n = run_source(pipeline, source, publish)
        finally:
            sink.close()
    finally:
        backends.close()
    c = pipeline.counters
    log.info("%d frames, %d faces, %d embedded in %d recognizer calls, %d events",
             c.frames, c.faces, c.embedded, c.recognizer_calls, n)
    if source.skipped:
        raise FacefleetError(f"{source.skipped} input(s) could not be read (see the log)")
    return 0


def _run_component(args) -> int:
    """``run --config FILE``: every camera of the file (plus ``--source`` as one more), commands
    from local MQTT, status events, the file watched; the same Component as on a device. Ends when
    every camera read a finite source to its end, or on SIGINT/SIGTERM."""
    import signal
    from pathlib import Path

    from facefleet.component.planes.local import LocalPlane
    from facefleet.component.service import Component

    if getattr(args, "annotate", None):
        raise FacefleetError("--annotate works on a plain run (--source without --config)")
    plane = LocalPlane(args.config, args.events, source=args.source, gallery=args.gallery, detector=args.detector,
                       recognizer=args.recognizer)
    comp = Component(plane, Path(args.config).resolve().parent, thing=plane.thing)
    previous = signal.signal(signal.SIGTERM, lambda *_: comp.request_stop())
    try:
        comp.start()
        comp.wait(until=lambda: comp.finished)
    finally:
        comp.stop(drain_s=10.0)
        plane.close_events()
        signal.signal(signal.SIGTERM, previous)
    skipped = sum(w.skipped for w in comp.cameras.values())
    if skipped:
        raise FacefleetError(f"{skipped} input(s) could not be read (see the log)")
    return 0


def cmd_demo(args) -> int:
    from facefleet.assets import assets_dir

    assets = assets_dir()
    enroll = sorted(p for p in (assets / "enroll").iterdir() if p.is_file())
    video = assets / "video" / "hamilton_clip.mp4"
    from facefleet.config import load_config
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import enroll_images, load_detector
    from facefleet.runtime import create_backend

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="facefleet-demo-") as tmp:
        gallery = Path(tmp) / "gallery"
        g = Gallery.open(gallery, create=True)
        detector = load_detector(create_backend(cfg.models.backend), cfg.models.detector, cfg)
        for img in enroll:
            enroll_images(g, detector, img.stem, [img])
            log.info("enrolled %s from %s", img.stem, img.name)
        run_args = argparse.Namespace(source=str(video), gallery=str(gallery), detector=None, recognizer=None,
                                      config=args.config, events=args.events, plain=True)
        return cmd_run(run_args)


# ---- bench -----------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from facefleet import bench

    if args.what == "search":
        result = bench.bench_search(args.identities, args.dim, args.queries)
    elif args.what == "distance":
        result = _bench_distance(args)
    else:
        if not args.source or not args.gallery:
            raise FacefleetError("bench needs --source and --gallery")
        from facefleet.config import load_config

        cfg = load_config(args.config)
        if args.recheck_every is not None:
            cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"recheck_every": args.recheck_every})})
        from facefleet.runtime import BackendPool

        backends = BackendPool()
        try:
            result = bench.bench_pipeline(_build_pipeline(args, cfg, backends), args.source, repeat=args.repeat)
        finally:
            backends.close()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(bench.format_result(result))
    return 0


def _bench_distance(args) -> dict:
    """Every face photo at every height, with the configured plan and, if it tiles, the
    single-letterbox baseline in the same run."""
    from facefleet import distance
    from facefleet.config import load_config
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import gallery_index, load_models
    from facefleet.recognition.pipeline import FacePipeline
    from facefleet.runtime import create_backend
    from facefleet.vision.tiling import DetectionPlan

    if not args.faces:
        raise FacefleetError("bench distance needs --faces DIR (one folder of photos per identity)")
    out_parent = Path(args.out).resolve().parent
    if not out_parent.is_dir() or not os.access(out_parent, os.W_OK):  # before the work, not after
        raise FacefleetError(f"--out {args.out}: folder {out_parent} does not exist or is not writable")
    try:
        fw, fh = (int(v) for v in args.frame.lower().split("x"))
        heights = tuple(float(h) for h in args.heights.split(","))
    except ValueError:
        raise FacefleetError(f"bad --frame {args.frame!r} or --heights {args.heights!r} (e.g. 1280x720, 112,80,56)") from None
    if fw < 64 or fh < 64 or not heights or min(heights) <= 0:
        raise FacefleetError("--frame must be at least 64x64 and --heights positive")
    cfg = load_config(args.config)
    models = load_models(create_backend(cfg.models.backend), cfg, args.detector, args.recognizer)
    photos = distance.load_faces(Path(args.faces), models.detector)
    plans = {"plan": cfg.detection.plan}
    if cfg.detection.plan.tiled:
        plans = {"baseline": DetectionPlan(), **plans}
    results = {}
    for name, plan in plans.items():
        run_cfg = cfg.model_copy(update={"detection": cfg.detection.model_copy(update={"plan": plan})})
        with tempfile.TemporaryDirectory(prefix="facefleet-distance-") as tmp:
            gallery = Gallery.open(Path(tmp) / "gallery", create=True)
            pipeline = FacePipeline(models.detector, models.recognizer, gallery_index(gallery, models.recognizer), run_cfg)
            results[name] = distance.run(pipeline, photos, gallery, heights, fw, fh)
    js, png = distance.write_outputs(results, Path(args.out))
    return {"runs": results, "json": str(js), "png": str(png)}


def cmd_config_schema(args) -> int:
    from facefleet.config import ComponentConfig

    print(json.dumps(ComponentConfig.model_json_schema(), indent=1))
    return 0


def cmd_config_check(args) -> int:
    from facefleet.config import ComponentConfig, load_config

    cfg = load_config(args.file, ComponentConfig)
    print(cfg.model_dump_json(indent=1))
    return 0


def cmd_models(args) -> int:
    from facefleet.modelspec import resolve_model

    for m in args.models:
        r = resolve_model(m)
        print(f"{r.path}\t{r.spec.name}\t{r.spec.kind}\t{r.spec.fingerprint}")
    return 0


# ---- parser ----------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="facefleet", description="Face recognition for Raspberry Pi + Hailo-8 fleets.")
    p.add_argument("--version", action="version", version=f"facefleet {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (stderr)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("gallery", help="manage an enrolled gallery")
    gsub = g.add_subparsers(dest="gallery_command", required=True, parser_class=_Parser)
    ga = gsub.add_parser("add", help="enroll the largest face of each image")
    ga.add_argument("--gallery", required=True, help="gallery folder (created if missing)")
    ga.add_argument("--name", required=True)
    ga.add_argument("--detector", help="detector model (default: det_500m)")
    ga.add_argument("--config", help="pipeline configuration YAML")
    ga.add_argument("images", nargs="+", metavar="IMAGE")
    ga.set_defaults(func=cmd_gallery_add)
    gl = gsub.add_parser("list", help="list identities")
    gl.add_argument("--gallery", required=True)
    gl.add_argument("--json", action="store_true")
    gl.set_defaults(func=cmd_gallery_list)
    gp = gsub.add_parser("pack", help="photos folder (one sub-folder per identity) -> gallery archive (crops, no embeddings)")
    gp.add_argument("--photos", required=True)
    gp.add_argument("--out", required=True, help="archive file (.tar.gz)")
    gp.add_argument("--detector", help="detector model (default: det_500m)")
    gp.add_argument("--config", help="pipeline configuration YAML")
    gp.set_defaults(func=cmd_gallery_pack)
    gm = gsub.add_parser("merge", help="add a gallery archive's identities to a gallery")
    gm.add_argument("--gallery", required=True)
    gm.add_argument("archive")
    gm.set_defaults(func=cmd_gallery_merge)
    gr = gsub.add_parser("remove", help="remove an identity")
    gr.add_argument("--gallery", required=True)
    gr.add_argument("--name", required=True)
    gr.set_defaults(func=cmd_gallery_remove)

    def pipeline_args(sp, events: bool = True):
        sp.add_argument("--source", help="video file, URL, camera index, image or folder")
        sp.add_argument("--gallery", help="gallery folder")
        sp.add_argument("--detector", help="detector model file (ModelSpec from a sidecar .json or the catalog)")
        sp.add_argument("--recognizer", help="recognizer model file")
        sp.add_argument("--config", help="pipeline configuration YAML")
        if events:
            sp.add_argument("--events", default="-", help="JSONL file to append events to, or - for stdout")

    r = sub.add_parser("run", help="run the pipeline on a source, print one JSON event per line")
    pipeline_args(r)
    r.add_argument("--annotate", metavar="OUT.mp4", help="also write a clip with the detection plan and the faces drawn (.mp4 or .avi)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="enroll shared/assets/enroll/* and run on the Hamilton clip")
    d.add_argument("--config", help="pipeline configuration YAML")
    d.add_argument("--events", default="-", help="JSONL file or - for stdout")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="measure fps, stage times, host overhead; 'bench search' for the gallery")
    b.add_argument("what", nargs="?", choices=["pipeline", "search", "distance"], default="pipeline")
    pipeline_args(b, events=False)
    b.add_argument("--repeat", type=_positive_int, default=1, help="an image source is fed as this many video frames")
    b.add_argument("--recheck-every", type=int, default=None, help="override tracking.recheck_every (1: embed every face every frame)")
    b.add_argument("--identities", type=int, default=100_000, help="bench search: gallery size")
    b.add_argument("--dim", type=int, default=512, help="bench search: embedding size")
    b.add_argument("--queries", type=int, default=5, help="bench search: faces per query batch")
    b.add_argument("--faces", help="bench distance: folder with one sub-folder of photos per identity")
    b.add_argument("--frame", default="1280x720", help="bench distance: camera resolution WxH")
    b.add_argument("--heights", default="112,80,56,40,28,20", help="bench distance: face heights in px")
    b.add_argument("--out", default="distance-report", help="bench distance: folder for the JSON and PNG")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("config", help="pipeline configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    csub.add_parser("schema", help="print the configuration's JSON Schema (every field documented)").set_defaults(
        func=cmd_config_schema)
    cc = csub.add_parser("check", help="validate a configuration YAML and print it with defaults filled in")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check)

    m = sub.add_parser("models", help="model specs: 'show' which spec a file resolves to, 'check' it on your photos")
    msub = m.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    ms = msub.add_parser("show", help="show the ModelSpec found for model files")
    ms.add_argument("models", nargs="+", metavar="MODEL")
    ms.set_defaults(func=cmd_models)
    importlib.import_module("facefleet.modelcheck").register(msub)
    importlib.import_module("facefleet.recognition.canary_cli").register(msub)  # quality canary (issue 15.1)

    for module in EXTENSIONS:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is cmd_run and not args.config and not (args.source and args.gallery):
        parser.error("run needs --source and --gallery (or --config FILE: the component, its cameras from the file)")
    _setup_logging(-1 if args.quiet else args.verbose)
    try:
        return args.func(args) or 0
    except FacefleetError as e:
        sys.stderr.write(f"facefleet: error: {e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("facefleet: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # permission denied, no space left...: the system's own words, one line
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        sys.stderr.write(f"facefleet: error: {e.strerror or e}{where}\n")
        return EXIT_ERROR
    except RecursionError:
        sys.stderr.write("facefleet: error: input nested too deeply\n")
        return EXIT_ERROR
    except Exception as e:  # the last line of defence: one line, not a traceback
        if os.environ.get("FACEFLEET_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        sys.stderr.write(f"facefleet: internal error: {type(e).__name__}: {first} (FACEFLEET_DEBUG=1 for details)\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
