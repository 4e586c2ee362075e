"""The Python API, and the orchestration behind every CLI command.

    from imgembed import api
    model = api.load_model()                       # offline EfficientNet-Lite0
    report = api.index_folder("photos", "indexes/default", model)
    with api.Searcher("indexes/default") as s:     # model and index loaded once
        hits = s.search(["query.jpg"], k=5)
        votes = s.classify(["query.jpg"], k=5)
    api.compare(model, "a.jpg", "b.jpg")           # cosine similarity
"""

from __future__ import annotations

from ..inference.pool import LocalPool
from ..inference.ray import RayCluster
from .auditing import AuditReport, Finding, audit
from .clustering import Cluster, ClusterReport, IntoPlan, clusters, move_into, plan_into
from .duplicates import (
                         JOURNALS,
                         ActionReport,
                         DuplicateGroup,
                         act_on_duplicates,
                         exact_duplicates,
                         find_duplicates,
                         latest_journal,
                         undo_duplicate_actions,
)
from .indexing import IndexOptions, IndexReport, index_folder
from .maintenance import check_index, drop_tombstones, index_info, rebuild_index, remove_paths
from .models import Query, embed, load_model
from .search import Classification, QueryResult, Searcher, compare
from .sorting import Proposal, SortPlan, move_indexed, plan_sort, sort_inbox

__all__ = ["load_model", "embed", "index_folder", "IndexReport", "Searcher", "compare", "QueryResult",
           "Classification", "index_info", "rebuild_index", "remove_paths", "drop_tombstones", "check_index",
           "find_duplicates", "DuplicateGroup", "exact_duplicates", "act_on_duplicates", "undo_duplicate_actions",
           "latest_journal", "JOURNALS", "ActionReport", "IndexOptions", "LocalPool", "RayCluster", "Query", "audit", "AuditReport", "Finding",
           "plan_sort", "sort_inbox", "SortPlan", "Proposal", "move_indexed",
           "clusters", "Cluster", "ClusterReport", "IntoPlan", "plan_into", "move_into"]
