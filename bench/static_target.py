"""A trivial HTTP target (fixed JSON reply) to check the load generator alone.

python -m bench.static_target PORT
"""

from __future__ import annotations

import sys

from aiohttp import web

BODY = b'{"customer_id":"0000-STATIC","churn_probability":0.5,"model_version":"x"}'


async def predict(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def ready(_: web.Request) -> web.Response:
    return web.Response(text="ready")


def main() -> None:
    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/readyz", ready)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None
    )


if __name__ == "__main__":
    main()
