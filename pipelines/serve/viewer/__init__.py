"""The browser viewer of the Serve endpoint: a static three.js page plus the JSON/PLY data calls it makes.

Why three.js, vendored: the page has to draw a few hundred thousand coloured points, camera frusta and box
wireframes, pick a box under the mouse, and work on a closed network. three.js is the most widely used WebGL
library (MIT, monthly releases), and its ``PLYLoader`` reads the endpoint's binary PLY point cloud as-is and
``OrbitControls`` gives the usual orbit/pan/zoom. Its ES-module build runs without a bundler or a build step, so
the page is plain HTML + one module script, and the files come from the npm package ``three`` (version and
licence in ``static/vendor/three/``): no CDN at run time, the page works offline. A Gradio app would add a
second web framework to the ingress with its own upload/queue path beside the API's limits and auth, and a
Python-native viewer (Open3D, viser) needs a desktop or a second server; the static page keeps the API the one
source of truth, so the page exercises exactly what other clients use.

Security: the page and its scripts are public (they hold no data); every data call is an API call with the same
``Authorization: Bearer`` check as the rest of API v1. The page keeps the token in ``sessionStorage`` (gone when
the tab closes) and sends it as a header, never as a cookie, so other sites cannot make a browser send it (no
CSRF). The page is served with a strict Content-Security-Policy: scripts only from this origin plus the page's
own import map (by hash), no inline code, data only from this origin.

Routes (under the app's route prefix): ``GET /viewer/`` (the page), ``GET /viewer/static/...`` (its scripts),
``GET /v1/scenes`` (registered scenes) and ``GET /v1/scenes/{id}/cameras`` (camera poses as JSON).
"""

from pipelines.serve.viewer.routes import mount_viewer

__all__ = ["mount_viewer"]
