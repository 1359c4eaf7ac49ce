"""drains and the global pause

Revision ID: c4e2f8a1b9d3
Revises: b7c1e9d4a2f0
Create Date: 2026-11-30 12:30:00.000000

A drain releases a backlog of held mail at a ramping pace; messages name their drain;
switches hold the global pause of delivery.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c4e2f8a1b9d3'
down_revision = 'b7c1e9d4a2f0'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'drains',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('relay_id', sa.Integer(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('created_by', sa.String(length=128), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('backlog', sa.Integer(), nullable=False),
        sa.Column('released', sa.Integer(), nullable=False),
        sa.Column('tokens', sa.Float(), nullable=False),
        sa.Column('refilled_run', sa.Float(), nullable=False),
        sa.Column('initial_rate', sa.Float(), nullable=False),
        sa.Column('factor', sa.Float(), nullable=False),
        sa.Column('step_seconds', sa.Float(), nullable=False),
        sa.Column('max_rate', sa.Float(), nullable=True),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('run_seconds', sa.Float(), nullable=False),
        sa.Column('resumed_at', sa.DateTime(), nullable=True),
        sa.Column('ended_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['relay_id'], ['relays.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_drains_state', 'drains', ['state', 'id'], unique=False)
    op.create_table(
        'switches',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('since', sa.DateTime(), nullable=False),
        sa.Column('by', sa.String(length=128), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('drain_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            'fk_messages_drain_id_drains', 'drains', ['drain_id'], ['id'], ondelete='SET NULL'
        )
        batch_op.create_index(
            'ix_messages_drain',
            ['drain_id', 'status', 'priority', 'created_at'],
            unique=False,
            sqlite_where=sa.text('drain_id IS NOT NULL'),
            postgresql_where=sa.text('drain_id IS NOT NULL'),
        )


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_drain')
        batch_op.drop_constraint('fk_messages_drain_id_drains', type_='foreignkey')
        batch_op.drop_column('drain_id')
    op.drop_table('switches')
    op.drop_index('ix_drains_state', table_name='drains')
    op.drop_table('drains')
