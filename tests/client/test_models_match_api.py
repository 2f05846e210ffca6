"""The client's models carry every field the API's response models answer with: a field added
to the API (a dataset's ``label_max``, an MRC row's ``max_ascent_loss``) is otherwise dropped
silently by the client (its models ignore unknown fields so that older clients keep working)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import api.schemas as api_schemas
import api.webhook_schemas as webhook_schemas
from api.routes import admin
from api.routes.materialize import MaterializationOut
from api.routes.mlflow_export import MlflowExportOut
from rift_client import models

PAIRS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (models.Checkpoint, api_schemas.CheckpointOut),
    (models.Dataset, api_schemas.DatasetOut),
    (models.CheckpointPage, api_schemas.CheckpointPageOut),
    (models.DatasetPage, api_schemas.DatasetPageOut),
    (models.StoredBytes, api_schemas.StoredBytesOut),
    (models.ActiveJobs, api_schemas.ActiveJobsOut),
    (models.PendingMaterializations, api_schemas.PendingMaterializationsOut),
    (models.Usage, api_schemas.UsageOut),
    (models.RequestWindow, api_schemas.RequestWindowOut),
    (models.EventStreams, api_schemas.EventStreamsOut),
    (models.JobError, api_schemas.JobError),
    (models.Stage, api_schemas.StageOut),
    (models.JobWarning, api_schemas.JobWarningOut),
    (models.Job, api_schemas.JobOut),
    (models.Job, api_schemas.JobListItemOut),
    (models.JobPage, api_schemas.JobPageOut),
    (models.Event, api_schemas.EventOut),
    (models.EventPage, api_schemas.EventPageOut),
    (models.MRCRow, api_schemas.MRCRowOut),
    (models.MRCTable, api_schemas.MRCTableOut),
    (models.Epoch, api_schemas.EpochOut),
    (models.InterpolationPoint, api_schemas.InterpolationPointOut),
    (models.CandidateCurve, api_schemas.CandidateCurveOut),
    (models.CandidateWeights, api_schemas.CandidateWeightsOut),
    (models.Curves, api_schemas.CurvesOut),
    (models.Artifact, api_schemas.ArtifactOut),
    (models.Materialization, MaterializationOut),
    (models.MlflowExport, MlflowExportOut),
    (models.Webhook, webhook_schemas.WebhookOut),
    (models.CreatedWebhook, webhook_schemas.WebhookCreatedOut),
    (models.WebhookAttempt, webhook_schemas.WebhookAttemptOut),
    (models.WebhookDelivery, webhook_schemas.WebhookDeliveryOut),
    (models.Project, admin.ProjectOut),
    (models.ApiKey, admin.KeyOut),
    (models.CreatedApiKey, admin.NewKeyOut),
    (models.Worker, admin.WorkerOut),
    (models.AuditEvent, api_schemas.AuditEventOut),
    (models.AuditEventPage, api_schemas.AuditEventPageOut),
]


@pytest.mark.parametrize(("client_model", "api_model"), PAIRS,
                         ids=[client.__name__ for client, _ in PAIRS])
def test_the_client_model_has_every_field_the_api_answers_with(
        client_model: type[BaseModel], api_model: type[BaseModel]) -> None:
    missing = sorted(set(api_model.model_fields) - set(client_model.model_fields))
    assert missing == [], f"rift_client.{client_model.__name__} lacks {missing}"


def test_every_client_resource_is_checked() -> None:
    # A new client model must join PAIRS (or be one the API has no response model for).
    # What webhooks send, and what the client reads out of a job's events: not the API's.
    not_responses = {"WebhookJobData", "WebhookMessage", "MlflowExportOutcome"}
    resources = {name for name, value in vars(models).items()
                 if isinstance(value, type) and issubclass(value, models._Resource)
                 and value is not models._Resource}
    assert resources - not_responses == {client.__name__ for client, _ in PAIRS}


def test_the_project_limits_and_key_scopes_are_the_apis() -> None:
    from typing import get_args

    from persistence.api_keys import LIMIT_MAXIMA

    assert set(models.PROJECT_LIMITS) == set(LIMIT_MAXIMA) == set(admin.ProjectLimitsIn.model_fields)
    assert get_args(admin.ScopeName) == models.KEY_SCOPES


def test_the_shortest_time_limit_is_the_apis() -> None:
    from pydantic import ValidationError

    assert models.MIN_TIME_LIMIT_SECONDS == api_schemas.MIN_TIME_LIMIT_SECONDS
    assert models.JobSpec(config={}, time_limit_seconds=1).time_limit_seconds == 1
    for value in (1e-9, 0.5, float("inf")):
        with pytest.raises(ValidationError, match="time_limit_seconds"):
            models.JobSpec(config={}, time_limit_seconds=value)


def test_a_jobs_attempts_say_what_they_count() -> None:
    # Before: "attempts": 3 on a job that ran cleanly, with nothing in /docs or the client's
    # model to say that it counts stage runs (three stages, one run each), not retries.
    for model in (api_schemas.JobOut, models.Job):
        description = model.model_fields["attempts"].description or ""
        assert "three stages ran once each" in description, model
    assert "1 unless retried" in (api_schemas.StageOut.model_fields["attempts"].description or "")
