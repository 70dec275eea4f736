"""The reference the gateway's submissions are measured against: the least a FastAPI +
asyncpg + nats-py service can do to accept a run, served by uvicorn as the gateway is.

``POST /runs`` with ``Authorization: Bearer <token>``: one query finds the token's user
(401 if none), one inserts the run, one core NATS message announces it; 202 with the run's
id. No ORM, no middleware, no logging, no row level security, no quotas or idempotency:
what is left is the framework, the drivers and the round trips.

    python -m benchmarks.bare_service --port 8123 --database-url postgresql://... \\
        --nats-url nats://... --token SECRET
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import uuid

import asyncpg
import nats
import uvicorn
from fastapi import FastAPI, Header, HTTPException, status

SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_users (id uuid PRIMARY KEY, token_hash text UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS bare_runs (id uuid PRIMARY KEY, owner_id uuid NOT NULL REFERENCES bare_users(id),
                                      status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_app(database_url: str, nats_url: str, token: str, subject: str) -> FastAPI:
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["pool"] = pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
            await conn.execute("INSERT INTO bare_users VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               uuid.uuid4(), token_hash(token))
        state["nc"] = await nats.connect(nats_url)
        yield
        await state["nc"].drain()
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/runs", status_code=status.HTTP_202_ACCEPTED)
    async def start_run(authorization: str = Header()) -> dict:
        scheme, _, sent = authorization.partition(" ")
        async with state["pool"].acquire() as conn:
            owner = await conn.fetchval("SELECT id FROM bare_users WHERE token_hash = $1", token_hash(sent.strip()))
            if scheme.lower() != "bearer" or owner is None:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown token")
            run_id = uuid.uuid4()
            await conn.execute("INSERT INTO bare_runs (id, owner_id, status) VALUES ($1, $2, 'queued')", run_id, owner)
        await state["nc"].publish(subject, run_id.bytes)
        return {"run_id": str(run_id), "status": "queued"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--subject", default="bare.runs")
    args = parser.parse_args()
    app = create_app(args.database_url, args.nats_url, args.token, args.subject)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
