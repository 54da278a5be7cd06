"""Views of a surface: VTK for ParaView (vtk_files, paraview_scene), self-contained Plotly pages (html_page)
and matplotlib paper figures (figures); surface_file and results_json read the inputs."""
