"""ESP ids on attempts and the suppression list

Revision ID: d5a3c7e9f1b2
Revises: c4e2f8a1b9d3
Create Date: 2026-11-30 13:00:00.000000

Attempts keep the id a relay's 250 reply gave the message, which its webhooks name;
addresses a hard bounce refused are suppressed.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd5a3c7e9f1b2'
down_revision = 'c4e2f8a1b9d3'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('esp_id', sa.String(length=255), nullable=True))
        batch_op.create_index(
            'ix_attempts_esp_id',
            ['esp_id'],
            unique=False,
            sqlite_where=sa.text('esp_id IS NOT NULL'),
            postgresql_where=sa.text('esp_id IS NOT NULL'),
        )
    op.create_table(
        'suppressions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('source', sa.String(length=128), nullable=False),
        sa.Column('relay_id', sa.Integer(), nullable=True),
        sa.Column('message_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['relay_id'], ['relays.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('address'),
    )


def downgrade():
    op.drop_table('suppressions')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_esp_id')
        batch_op.drop_column('esp_id')
