"""Views of a surface: VTK for ParaView (vtk_files, paraview_scene), self-contained Plotly pages (html_page)
and matplotlib paper figures (figures); surface_file reads the input; other packages' result files reach a
page through a registered view (views); commands holds the `fasland export` functions."""
