"""Views of result files other than surfaces, for `fasland export html` (an extension point).

landscape knows surfaces only; a package whose JSON results should appear on a page registers a view:

    register(view)      # view.command: the command whose --out file it shows (its JSON's "command")
                        # view.title: the page section's heading
                        # view.read(path, data, label) -> [item, …]   (data: the parsed JSON)
                        # view.figure(items) -> plotly Figure

analysis.views registers the Hessian and conflicts views when imported (fasland/cli.py imports it).
"""
_VIEWS: dict = {}


def register(view) -> None:
    _VIEWS[view.command] = view


def view_for(data: dict):
    """The registered view of a parsed result file (by its "command"), else None."""
    return _VIEWS.get(data.get("command")) if isinstance(data, dict) else None


def commands() -> list[str]:
    return list(_VIEWS)
