"""Wire models: JSON shape, type checks, defaults, and the sandbox identity (easyfaas/models.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from easyfaas.models import (
    CodeLocation,
    Concurrency,
    ContainerInfo,
    Environment,
    FunctionConfiguration,
    FunctionRecord,
    ModelError,
    NodeResource,
    ResetRequest,
    Resource,
    ResourceStats,
    RuntimeConfiguration,
    WarmupRequest,
    WarmupResponse,
    function_identity,
)

# A GetFunctionOutput as the Go original's stubs wrote it (docs/func-registry.md shape), with the
# Lambda fields this implementation does not model.
ORIGINAL_RECORD = {
    "Code": {"Location": "/var/faas/funcData/x/code.zip", "RepositoryType": "filesystem", "LogType": ""},
    "Concurrency": {"ReservedConcurrentExecutions": None, "AccountReservedSum": None},
    "Configuration": {
        "CodeSha256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        "CodeSize": 338,
        "DeadLetterConfig": None,
        "Description": None,
        "Environment": {"Error": None, "Variables": {}},
        "FunctionArn": "brn:cloud:faas:bj:8f6e5a28c663957ea04522547a66d08f:function:testHelloWorld:1",
        "FunctionName": "testHelloWorld",
        "Handler": "index.handler",
        "KMSKeyArn": None,
        "LastModified": "2021-04-20T10:00:00+08:00",
        "MemorySize": 128,
        "Runtime": "nodejs10",
        "Timeout": 5,
        "Version": "1",
        "CommitId": "349dd8a4-db7d-4fc3-a4cd-8c8b482e00c3",
        "Uid": "df391b08c64c426a81645468c75163a5",
        "PodConcurrentQuota": 10,
    },
    "LogConfig": {"LogType": "", "BosDir": "", "Params": ""},
    "Tags": {},
}


def test_reads_the_originals_record() -> None:
    record = FunctionRecord.from_dict(ORIGINAL_RECORD)
    cfg = record.Configuration
    assert (cfg.FunctionName, cfg.Version, cfg.Timeout, cfg.PodConcurrentQuota) == ("testHelloWorld", "1", 5, 10)
    assert cfg.Description == ""  # null -> default
    assert record.Concurrency == Concurrency(None, 0)
    assert record.Code.RepositoryType == "filesystem"
    assert "DeadLetterConfig" not in json.dumps(record.to_dict())  # unknown keys ignored


def test_defaults_and_field_order() -> None:
    cfg = FunctionConfiguration()
    assert (cfg.Handler, cfg.MemorySize, cfg.Timeout, cfg.Version) == ("index.handler", 128, 3, "$LATEST")
    assert list(cfg.to_dict()) == [
        "CodeSha256", "CodeSize", "Description", "Environment", "FunctionArn", "FunctionName", "Handler",
        "LastModified", "MemorySize", "Runtime", "Timeout", "Version", "CommitId", "Uid", "LogType",
        "PodConcurrentQuota", "SecretsAsEnvironment", "Network",
    ]
    assert list(FunctionRecord().to_dict()) == ["Code", "Concurrency", "Configuration", "LogConfig", "Tags"]
    assert RuntimeConfiguration().to_dict() == {
        "Name": "", "Bin": "", "Path": "", "Args": [], "Launch": "exec", "Env": {}, "Aliases": [], "Standby": False
    }
    assert FunctionRecord.from_dict({}) == FunctionRecord()
    # mutable defaults are not shared between instances
    a, b = FunctionConfiguration(), FunctionConfiguration()
    a.Environment.Variables["X"] = "1"
    assert b.Environment.Variables == {}


@pytest.mark.parametrize(
    "model, data, field",
    [
        (FunctionRecord, {"Configuration": {"Timeout": "5"}}, "Configuration.Timeout"),
        (FunctionRecord, {"Configuration": {"MemorySize": True}}, "Configuration.MemorySize"),
        (FunctionRecord, {"Configuration": {"MemorySize": 1.5}}, "Configuration.MemorySize"),
        (FunctionRecord, {"Configuration": {"Environment": {"Variables": {"A": 1}}}}, "Configuration.Environment.Variables.A"),
        (FunctionRecord, {"Configuration": {"Environment": []}}, "Configuration.Environment"),
        (FunctionRecord, {"Tags": {"k": 3}}, "Tags.k"),
        (FunctionRecord, {"Code": "x"}, "Code"),
        (RuntimeConfiguration, {"Args": "a b"}, "Args"),
        (RuntimeConfiguration, {"Args": ["a", 2]}, "Args[1]"),
        (ContainerInfo, {"IsFrozen": "false"}, "IsFrozen"),
        (ContainerInfo, {"ResourceStats": {"OOMKills": "1"}}, "ResourceStats.OOMKills"),
        (WarmupResponse, {"InitError": "boom"}, "InitError"),
        (WarmupRequest, {"RuntimeConfiguration": {"Name": 1}}, "RuntimeConfiguration.Name"),
    ],
)
def test_type_errors_name_the_field(model: type, data: dict, field: str) -> None:
    with pytest.raises(ModelError) as info:
        model.from_dict(data)
    assert str(info.value).startswith(field + ":")


def test_not_an_object() -> None:
    with pytest.raises(ModelError, match="FunctionRecord: expected an object, got array"):
        FunctionRecord.from_dict([])


def test_optional_fields_keep_null() -> None:
    info = ContainerInfo.from_dict({"ResourceStats": None, "Resource": None, "State": "warm"})
    assert info.ResourceStats is None and info.Resource == Resource() and info.State == "warm"
    assert info.to_dict()["ResourceStats"] is None
    info = ContainerInfo.from_dict({"ResourceStats": {"MemoryPeak": 5}})
    assert info.ResourceStats == ResourceStats(MemoryPeak=5)
    assert Concurrency.from_dict({"ReservedConcurrentExecutions": 4}).ReservedConcurrentExecutions == 4
    response = WarmupResponse.from_dict({"InitError": {"errorMessage": "x", "stackTrace": ["a"]}})
    assert response.InitError == {"errorMessage": "x", "stackTrace": ["a"]}


@pytest.mark.parametrize(
    "instance",
    [
        FunctionRecord(
            Code=CodeLocation("/x.zip", "filesystem"),
            Concurrency=Concurrency(3, 7),
            Configuration=FunctionConfiguration(FunctionName="f", Environment=Environment({"A": "b"}), Timeout=9),
            Tags={"t": "v"},
        ),
        RuntimeConfiguration("nodejs", "/usr/bin/node", "/var/faas/runtime/nodejs", ["/var/runtime/b.js"],
                             "exec", {"NODE_OPTIONS": "--x"}, ["nodejs10"]),
        NodeResource(BaseMemory=1, Default=Resource(100, 2), Capacity=Resource(2000, 3)),
        ContainerInfo(ContainerID="c1", Resource=Resource(1, 2), ResourceStats=ResourceStats(1, 2, 3, 4, 5)),
        WarmupRequest(ContainerID="c", Configuration=FunctionConfiguration(Runtime="python3"),
                      RuntimeConfiguration=RuntimeConfiguration(Name="python3", Launch="fork-python")),
        WarmupResponse(Container=ContainerInfo(State="warm"), InitError={"errorMessage": "x"}),
        ResetRequest("c", "r", "idle"),
    ],
)
def test_round_trip_through_json(instance: object) -> None:
    data = json.loads(json.dumps(instance.to_dict()))  # type: ignore[attr-defined]
    assert type(instance).from_dict(data) == instance  # type: ignore[attr-defined]


def test_field_named_like_its_type() -> None:
    request = WarmupRequest.from_dict({"RuntimeConfiguration": {"Name": "nodejs", "Args": ["a"]}})
    assert isinstance(request.RuntimeConfiguration, RuntimeConfiguration)
    assert request.RuntimeConfiguration.Args == ["a"]


def test_function_identity_covers_each_part() -> None:
    base = FunctionConfiguration(
        FunctionArn="brn:cloud:faas:bj:8f6e5a28c663957ea04522547a66d08f:function:f:1", Version="1",
        CodeSha256="abc", CommitId="c1", Handler="index.handler", Runtime="nodejs10", MemorySize=128, Timeout=3,
        Environment=Environment({"A": "1", "B": "2"}),
    )
    identity = function_identity(base)
    assert len(identity) == 64 and identity == function_identity(dataclasses.replace(base))
    same_env_other_order = dataclasses.replace(base, Environment=Environment({"B": "2", "A": "1"}))
    assert function_identity(same_env_other_order) == identity
    changes = dict(FunctionArn="other", Version="2", CodeSha256="def", CommitId="c2", Handler="index.other",
                   Runtime="python3", MemorySize=256, Timeout=4, Environment=Environment({"A": "1"}))
    identities = {identity}
    for key, value in changes.items():
        identities.add(function_identity(dataclasses.replace(base, **{key: value})))
    assert len(identities) == len(changes) + 1
    # unrelated fields do not split the identity
    assert function_identity(dataclasses.replace(base, Description="x", LastModified="now")) == identity
