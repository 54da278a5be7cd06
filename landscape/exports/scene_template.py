"""ParaView scene written by `fasland export vtk`: the loss surface coloured by its height, level lines on
it, and the training path. The data files sit beside this script.

    pvpython PREFIX_scene.py --interact            a window you can rotate
    pvbatch  PREFIX_scene.py --screenshot out.png  no display needed (under xvfb-run where there is no X)
    paraview --script=PREFIX_scene.py              inside the ParaView GUI

Only paraview.simple and the standard library are used, so any ParaView's own Python runs it.
"""
import argparse
import math
import os
import sys

SCENE = {}  # filled in by fasland: file names, height range, levels, title


def parse_args(argv):
    p = argparse.ArgumentParser(description="Open the exported loss surface in ParaView.")
    p.add_argument("--screenshot", metavar="PNG", help="save the view to this image and exit")
    p.add_argument("--size", nargs=2, type=int, default=[1280, 960], metavar=("W", "H"), help="image size in pixels")
    p.add_argument("--interact", action="store_true", help="keep the window open (pvpython)")
    return p.parse_known_args(argv)[0]  # the GUI may pass arguments of its own


def here(name):
    script = globals().get("__file__") or sys.argv[0]
    return os.path.join(os.path.dirname(os.path.abspath(script)), name)


def set_if_present(proxy, name, value):
    """Properties differ between ParaView versions; a missing one only loses a nicety."""
    try:
        setattr(proxy, name, value)
    except AttributeError:
        pass


def show_surface(pv, view):
    reader = pv.XMLPolyDataReader(registrationName=SCENE["surface"], FileName=[here(SCENE["surface"])])
    source = pv.GenerateSurfaceNormals(Input=reader) if SCENE["ndim"] == 2 else reader
    disp = pv.Show(source, view)
    pv.ColorBy(disp, ("POINTS", "height"))
    lut = pv.GetColorTransferFunction("height")
    lut.ApplyPreset(SCENE["colormap"], True)
    set_if_present(lut, "AutomaticRescaleRangeMode", "Never")
    lut.RescaleTransferFunction(*SCENE["range"])
    disp.SetScalarBarVisibility(view, True)
    bar = pv.GetScalarBar(lut, view)
    bar.Title, bar.ComponentTitle = SCENE["bar_title"], ""
    set_if_present(bar, "RangeLabelFormat", "%-#.4g")
    for name in ("TitleColor", "LabelColor"):
        set_if_present(bar, name, [0.1, 0.1, 0.1])
    disp.Specular, disp.SpecularPower = 0.35, 40.0
    disp.Interpolation = "Gouraud"
    if SCENE["ndim"] == 1:
        disp.LineWidth = 5.0
        set_if_present(disp, "RenderLinesAsTubes", 1)
    elif SCENE["levels"]:
        levels = pv.Contour(Input=reader, ContourBy=["POINTS", "height"], Isosurfaces=SCENE["levels"])
        ldisp = pv.Show(levels, view)
        ldisp.ColorArrayName = ["POINTS", ""]
        ldisp.AmbientColor = ldisp.DiffuseColor = [0.15, 0.15, 0.15]
        ldisp.LineWidth = 1.5
    return reader


def show_trajectory(pv, view):
    reader = pv.XMLPolyDataReader(registrationName=SCENE["trajectory"], FileName=[here(SCENE["trajectory"])])
    tube = pv.Tube(Input=reader, Radius=SCENE["tube_radius"], NumberofSides=16)
    disp = pv.Show(tube, view)
    disp.ColorArrayName = ["POINTS", ""]
    disp.AmbientColor = disp.DiffuseColor = [0.85, 0.1, 0.1]
    disp.Specular = 0.5
    dots = pv.Show(reader, view)
    dots.ColorArrayName = ["POINTS", ""]
    dots.SetRepresentationType("Points")
    dots.AmbientColor = dots.DiffuseColor = [1.0, 0.85, 0.2]
    dots.PointSize = 9.0
    set_if_present(dots, "RenderPointsAsSpheres", 1)


def place_camera(view):
    """An oblique view from the front-left above the surface (a side view for 1-D curves), then fit."""
    (x0, x1), (y0, y1), (z0, z1) = SCENE["bounds"]
    centre = [(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2]
    direction = [0.0, -1.0, 0.0] if SCENE["ndim"] == 1 else [-0.9, -1.5, 1.1]
    norm = math.sqrt(sum(d * d for d in direction))
    dist = 3.0 * max(x1 - x0, y1 - y0, z1 - z0, 1e-9)
    view.CameraFocalPoint = centre
    view.CameraPosition = [c + dist * d / norm for c, d in zip(centre, direction)]
    view.CameraViewUp = [0.0, 0.0, 1.0]
    view.ResetCamera()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from paraview import simple as pv

    view = pv.GetActiveViewOrCreate("RenderView")
    view.ViewSize = list(args.size)
    set_if_present(view, "UseColorPaletteForBackground", 0)
    view.Background = [1.0, 1.0, 1.0]
    set_if_present(view, "OrientationAxesLabelColor", [0.1, 0.1, 0.1])
    show_surface(pv, view)
    # the structured grid with every array, in the pipeline browser for filters (not shown)
    pv.XMLStructuredGridReader(registrationName=SCENE["grid"], FileName=[here(SCENE["grid"])])
    if SCENE.get("trajectory"):
        show_trajectory(pv, view)
    title = pv.Text(registrationName="title", Text=SCENE["title"])
    tdisp = pv.Show(title, view)
    tdisp.Color, tdisp.FontSize, tdisp.WindowLocation = [0.1, 0.1, 0.1], 14, "Upper Left Corner"
    place_camera(view)
    pv.Render(view)
    if args.screenshot:
        pv.SaveScreenshot(args.screenshot, view, ImageResolution=list(args.size), TransparentBackground=0)
        print("saved", args.screenshot)
    elif args.interact:
        pv.Interact(view)


if __name__ in ("__main__", "__vtkconsole__") or "paraview" in os.path.basename(sys.argv[0] or ""):
    main()
