"""`fasland export {vtk,html,png}`: the parsers; the work is landscape.exports.commands (fasland/cli.py
dispatches). Heavy imports (vtk, plotly, matplotlib) happen only when the subcommand runs."""
import argparse


def _height_args(p, many: bool) -> None:
    p.add_argument("--surf-name", default="train_loss", metavar="NAME",
                   help="the array giving the height" + (" / shown first" if many else "") + " (default: train_loss; "
                        "any array of the file: train_acc, test_loss, test_hter, loss_<D>, …)")
    p.add_argument("--log", action="store_true", help="height log(f + 0.1), as the reference's h52vtp")
    p.add_argument("--zmax", type=float, default=None, metavar="Z", help="clip the values at Z before --log")


def register(sub) -> None:
    p = sub.add_parser("export", help="write a surface for ParaView (vtk), a browser (html) or a paper (png)",
                       description="Export loss surfaces (and Hessian/conflict results) to ParaView, interactive pages or figures.")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")

    v = fmt.add_parser("vtk", help="VTK XML files and a ParaView scene script",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Write PREFIX.vts (structured grid), PREFIX.vtp (polydata surface, or polyline for 1-D), "
                                   "PREFIX_trajectory.vtp (the training path, if stored) and PREFIX_scene.py.",
                       epilog="Then: pvpython PREFIX_scene.py --interact, or\n"
                              "      xvfb-run -a pvbatch PREFIX_scene.py --screenshot view.png")
    v.add_argument("surface", metavar="SURF.h5")
    v.add_argument("--out", required=True, metavar="PREFIX", help="output path prefix, e.g. runs/erm/surface")
    _height_args(v, many=False)
    v.add_argument("--zscale", type=float, default=None, metavar="S",
                   help="z = S × height (default: the height range spans half the grid's width; pass one S to compare surfaces)")
    v.add_argument("--screenshot", metavar="PNG", help="also render the scene with ParaView's pvbatch into PNG")
    v.add_argument("--size", nargs=2, type=int, default=[1280, 960], metavar=("W", "H"), help="screenshot size in pixels")
    v.set_defaults(run=run_vtk)

    h = fmt.add_parser("html", help="a self-contained interactive page (surfaces, Hessian and conflict JSON)",
                       description="One HTML page with plotly.js embedded (works offline): 3D surfaces and contours with the "
                                   "training path side by side on a shared colour scale, 1-D curves of every domain, Hessian "
                                   "densities and gradient-conflict matrices from the analysis JSON files.")
    h.add_argument("inputs", nargs="+", metavar="FILE", help="SURF.h5, HESSIAN.json or CONFLICTS.json files")
    h.add_argument("--out", required=True, metavar="PAGE.html")
    _height_args(h, many=True)
    h.add_argument("--labels", metavar="A,B,…", help="names for the input files, e.g. ERM,SAM,GAC-FAS")
    h.add_argument("--title", help="page title")
    h.set_defaults(run=run_html)

    g = fmt.add_parser("png", help="paper figures with matplotlib (png, pdf or svg by the extension)",
                       description="2-D surfaces: labelled contours with the training path above 3D surfaces; 1-D: loss and "
                                   "accuracy curves of every domain. Several files side by side with shared levels.")
    g.add_argument("surfaces", nargs="+", metavar="SURF.h5")
    g.add_argument("--out", required=True, metavar="FIG.png")
    _height_args(g, many=False)
    g.add_argument("--labels", metavar="A,B,…", help="names for the surfaces, e.g. ERM,SAM,GAC-FAS")
    g.add_argument("--levels", metavar="MIN:MAX:STEP", help="contour levels (default: about 12 round levels over the data)")
    g.add_argument("--dpi", type=int, default=200)
    g.set_defaults(run=run_png)


def run_vtk(args) -> int:
    from landscape.exports.commands import export_vtk

    files = export_vtk(args.surface, args.out, args.surf_name, args.log, args.zmax, args.zscale, args.screenshot, args.size)
    for kind, path in files.items():
        print(f"{kind:>10}: {path}")
    if not args.screenshot:
        print(f"ParaView: pvpython {files['scene']} --interact   (or: xvfb-run -a pvbatch {files['scene']} --screenshot view.png)")
    return 0


def run_html(args) -> int:
    from landscape.exports.commands import export_html

    print(export_html(args.inputs, args.out, args.surf_name, args.log, args.zmax, args.labels, args.title))
    return 0


def run_png(args) -> int:
    from landscape.exports.commands import export_png

    print(export_png(args.surfaces, args.out, args.surf_name, args.log, args.zmax, args.labels, args.levels, args.dpi))
    return 0
