"""``vitlab explore``: look inside a model in the browser.

- :mod:`~vitlab.explore.compute`: :class:`Explorer`, what the page shows, computed with vitlab's analysis functions;
- :mod:`~vitlab.explore.server`: the web server (Starlette + uvicorn, the ``explore`` extra);
- :mod:`~vitlab.explore.export`: one self-contained HTML page with the data embedded;
- ``static/``: the page itself, plain HTML, CSS and JavaScript, nothing fetched from outside.
"""

from vitlab.explore.compute import ExploreError, Explorer, MapParams
from vitlab.explore.export import export_page

__all__ = ["ExploreError", "Explorer", "MapParams", "export_page"]
