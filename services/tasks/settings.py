"""Tasks service settings (env prefix TASKS_, shared values from TASKBUS_)."""

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings

DEV_CURSOR_SECRET = "dev-only-cursor-secret-change-me"  # noqa: S105 - refused in production


class TasksSettings(ServiceSettings):
    """Configuration of the tasks process."""

    model_config = SettingsConfigDict(env_prefix="TASKS_")

    service_name: str = "tasks"
    port: int = 8002
    mongo_db: str = "taskbus_tasks"
    # A fixed JWKS (JSON) used instead of fetching jwks_url: tests, or a key set mounted as a file.
    # Signs pagination cursors so clients cannot forge positions.
    cursor_secret: SecretStr = SecretStr(DEV_CURSOR_SECRET)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # FerretDB 1.24 applies updates as read-then-write without isolation (concurrent updates to
    # one document are lost), so every read-modify-write holds a lock document. MongoDB's
    # single-document updates are atomic on their own; it may turn this off.
    write_locks: bool = True
    lock_wait_s: float = Field(default=5.0, gt=0)
    outbox_max: int = Field(default=500, ge=1)
    # Replicas may leave the relay or the reminder scan to others (e.g. a dedicated deployment).
    relay_enabled: bool = True
    reminders_enabled: bool = True
    # Writes wake the relay themselves; the poll only finds what a crashed replica left (its
    # leases expire after relay_lease_s), so it need not rescan the collection every second.
    relay_interval_s: float = Field(default=5.0, gt=0)
    relay_batch: int = Field(default=100, ge=1)
    # A batch's lease only has to outlive one publish round; a relay that overruns it causes
    # duplicates, never losses (common.relay), and a dead relay's documents wait this long.
    relay_lease_s: float = Field(default=10.0, gt=0)
    # Writes are refused (503) while more events than this wait in the outboxes, so consumers do
    # not fall ever further behind. The relay's sweep counts them (every relay_interval_s, the
    # same scan); a replica without a relay recounts every backlog_refresh_s. Each count scans
    # the collection on FerretDB, which is why the two do not both run.
    backlog_max: int = Field(default=5000, ge=1)
    # Writes are refused too while more published documents than this wait to be cleared: the
    # database's rewrites, not Kafka, then limit the write rate (common.relay_clear).
    uncleared_max: int = Field(default=2000, ge=1)
    backlog_refresh_s: float = Field(default=10.0, gt=0)
    # Load shedding: requests served at once, how many may wait for a slot and for how long.
    # Measured under 200 connections (tests/fault/test_tasks_overload.py): 16 at once serve as
    # many requests per second as 32 did, at half the served p99 (0.3 s instead of 0.6 s).
    shed_limit: int = Field(default=16, ge=1)
    shed_queue: int = Field(default=32, ge=0)
    shed_wait_s: float = Field(default=0.5, ge=0)
    # The per-user cap on stored tasks (services/tasks/quota.py): each process counts a user's
    # tasks again after quota_recount_every creates it admitted, and at most every
    # quota_recheck_s once at the cap; a user may overshoot by replicas x quota_recount_every.
    max_tasks_per_user: int = Field(default=10_000, ge=1)
    quota_recount_every: int = Field(default=100, ge=1)
    quota_recheck_s: float = Field(default=10.0, gt=0)
    # Event producers (services/tasks/commands.py): who may send which commands for which users
    # (common.commands.Policies; re-read when it changes), how soon a new producer's topic is
    # found, and how many records one fetch hands the handler.
    commands_enabled: bool = True
    producers_file: str = "var/kafka/producers.json"
    commands_metadata_max_age_ms: int = Field(default=30_000, ge=1000)
    commands_batch: int = Field(default=200, ge=1)
    # How long the command ledger remembers a rejected or no-op command: past the command topics'
    # retention (7 days by default), so a redelivery never outlives its entry.
    commands_retention_s: int = Field(default=14 * 86400, ge=60)
    reminder_lead_s: float = Field(default=3600.0, ge=0)
    reminder_interval_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _no_dev_secrets_in_production(self) -> "TasksSettings":
        if self.is_production and self.cursor_secret.get_secret_value() == DEV_CURSOR_SECRET:
            raise ValueError("TASKS_CURSOR_SECRET must be set in production")
        if self.is_production and len(self.cursor_secret.get_secret_value()) < 32:
            raise ValueError("TASKS_CURSOR_SECRET must be at least 32 characters")
        return self
