"""The checked-in migration chain builds exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade

from app import create_app
from app.config import PROJECT_ROOT
from app.db import db
from tests.conftest import make_settings


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
def test_migrations_match_the_models(tmp_path: Path, database_url: str) -> None:
    app = create_app({"SETTINGS": make_settings(tmp_path, database_url)})
    with app.app_context():
        upgrade(directory=str(PROJECT_ROOT / "migrations"))
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        db.engine.dispose()
    assert diff == []


def test_the_claim_reads_the_due_index_without_sorting(tmp_path: Path) -> None:
    app = create_app({"SETTINGS": make_settings(tmp_path, f"sqlite:///{tmp_path / 'q.db'}")})
    with app.app_context():
        upgrade(directory=str(PROJECT_ROOT / "migrations"))
        from sqlalchemy import text

        from app.services import queue

        with db.engine.begin() as conn:
            queue.claim(conn, "w", 10, 30)  # compiles and runs on the migrated schema
            due = queue.due_query(10)
            compiled = due.compile(conn, compile_kwargs={"literal_binds": True})
            plan = " ".join(
                str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
            )
        db.engine.dispose()
    assert "ix_messages_due" in plan and "TEMP B-TREE" not in plan, plan
