"""Preference data: reading pairs from files, chat templates, tokenizing and collating."""

from rmrun.data.arrays import TokenizedPairs
from rmrun.data.formats import BadRowReport, DataError, Message, PreferencePair, read_pairs, read_sources
from rmrun.data.template import (
    ChatTemplate,
    end_of_assistant_token,
    load_chat_template,
    render_conversations,
    resolve_chat_template,
)
from rmrun.data.tokenize import ScoringRule, collate, scored_texts, tokenize_pairs

__all__ = [
    "BadRowReport",
    "ChatTemplate",
    "DataError",
    "Message",
    "PreferencePair",
    "ScoringRule",
    "TokenizedPairs",
    "collate",
    "end_of_assistant_token",
    "load_chat_template",
    "read_pairs",
    "read_sources",
    "render_conversations",
    "resolve_chat_template",
    "scored_texts",
    "tokenize_pairs",
]
