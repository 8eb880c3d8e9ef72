"""All ORM models; importing this package registers every table on ``Base.metadata``."""

from engram.store.models.agents import Agent, AgentBlock, AgentTag, AgentTool
from engram.store.models.archives import Archive, ArchiveAgent, Passage
from engram.store.models.base import Base, OrganizationScoped
from engram.store.models.blocks import Block
from engram.store.models.file_views import FileView
from engram.store.models.idempotency import IdempotencyKey
from engram.store.models.messages import Message
from engram.store.models.runs import Run, Step
from engram.store.models.secrets import AgentEnvironmentVariable, Provider
from engram.store.models.sources import FileContent, Source, SourceAgent, SourceFile
from engram.store.models.tenancy import ApiKey, Organization, User
from engram.store.models.tools import Tool

__all__ = [
    "Agent",
    "AgentBlock",
    "AgentEnvironmentVariable",
    "AgentTag",
    "AgentTool",
    "ApiKey",
    "Archive",
    "ArchiveAgent",
    "Base",
    "Block",
    "FileContent",
    "FileView",
    "IdempotencyKey",
    "Message",
    "Organization",
    "OrganizationScoped",
    "Passage",
    "Provider",
    "Run",
    "Source",
    "SourceAgent",
    "SourceFile",
    "Step",
    "Tool",
    "User",
]
