"""The expert-backed workflow tools, each defined by its words: role of the expert and actions per step."""

from __future__ import annotations

from exai.tools.workflow_base import WorkflowSpec, WorkflowTool

_FORMAT = (
    " Be specific: cite files and lines, rank by severity, and say what to do. If the investigation missed "
    "something important, say so."
)


class ThinkDeepTool(WorkflowTool):
    spec = WorkflowSpec(
        "thinkdeep",
        "Think deep",
        "Multi-step deep reasoning on a hard problem; a second model challenges and extends your analysis.",
        "You are a principal engineer extending another engineer's analysis. Challenge assumptions, find gaps, "
        "weigh alternatives and trade-offs, and conclude with a clear recommendation." + _FORMAT,
        (
            "Examine the problem from a new angle",
            "Test your current hypothesis against the code",
            "Note trade-offs and open questions",
        ),
    )


class DebugTool(WorkflowTool):
    spec = WorkflowSpec(
        "debug",
        "Debug",
        "Step-by-step root-cause investigation of a bug; an expert model validates the hypothesis at the end.",
        "You are a debugging expert. From the evidence gathered, identify the most likely root cause, explain the "
        "failure mechanism, propose the minimal fix, and say how to verify it." + _FORMAT,
        (
            "Reproduce or trace the failure path",
            "Read the code where the symptom appears and its callers",
            "Form or refine a hypothesis and look for evidence against it",
        ),
    )


class AnalyzeTool(WorkflowTool):
    spec = WorkflowSpec(
        "analyze",
        "Analyze code",
        "Step-by-step analysis of code or architecture: structure, quality, performance, risks.",
        "You are a software architect reviewing an analysis of a codebase. Assess architecture, coupling, "
        "scalability, maintainability and risks; prioritise the findings." + _FORMAT,
        (
            "Map the main modules and how they depend on each other",
            "Look for hot paths, duplication and risks",
            "Record concrete findings with file references",
        ),
    )


class CodeReviewTool(WorkflowTool):
    spec = WorkflowSpec(
        "codereview",
        "Code review",
        "Step-by-step code review (correctness, security, performance, style) with an expert second pass.",
        "You are a meticulous senior code reviewer. Validate the reported issues, find missed bugs, security "
        "problems and performance traps, and give fixes ordered by severity." + _FORMAT,
        (
            "Read the changed or relevant code carefully",
            "Check correctness, error handling, security, performance",
            "Record each issue with severity and location",
        ),
    )


class RefactorTool(WorkflowTool):
    spec = WorkflowSpec(
        "refactor",
        "Refactor",
        "Step-by-step search for refactoring opportunities: code smells, decomposition, modernisation.",
        "You are a refactoring expert. Propose concrete, behaviour-preserving refactorings in priority order, "
        "each with the code it touches and the benefit." + _FORMAT,
        (
            "Find code smells and oversized units",
            "Identify decomposition and simplification opportunities",
            "Note risks and the tests that protect each change",
        ),
        category="balanced",
    )


class SecAuditTool(WorkflowTool):
    spec = WorkflowSpec(
        "secaudit",
        "Security audit",
        "Step-by-step security audit (OWASP Top 10, authn/z, input handling, secrets, dependencies).",
        "You are an application security auditor. Validate the findings, find missed vulnerabilities, rate each "
        "by severity and exploitability, and give remediations." + _FORMAT,
        (
            "Map entry points and trust boundaries",
            "Check authentication, authorisation, input validation, secrets",
            "Record vulnerabilities with severity and location",
        ),
    )


class TestGenTool(WorkflowTool):
    spec = WorkflowSpec(
        "testgen",
        "Test generation",
        "Step-by-step test planning for code; the expert proposes concrete test cases including edge cases.",
        "You are a test engineer. Propose concrete tests (names, inputs, expected results) covering behaviour, "
        "edge cases and failure modes, in the project's test framework." + _FORMAT,
        (
            "Identify the units and behaviours to test",
            "List edge cases and failure modes",
            "Note the existing test framework and fixtures",
        ),
        category="balanced",
    )


class DocGenTool(WorkflowTool):
    spec = WorkflowSpec(
        "docgen",
        "Documentation",
        "Step-by-step documentation of code: docstrings, complexity notes, call flow.",
        "You are a technical writer for engineers. Write precise documentation for the analysed code: purpose, "
        "parameters, return values, errors, complexity and gotchas." + _FORMAT,
        (
            "Read each function or class to document",
            "Note parameters, errors, complexity and callers",
            "Record what is undocumented or wrong",
        ),
        category="balanced",
    )


class TracerTool(WorkflowTool):
    spec = WorkflowSpec(
        "tracer",
        "Trace code",
        "Step-by-step tracing of call flow or dependencies of a function, class or module.",
        "You are a code-flow analyst. From the trace gathered, present the execution flow or dependency map "
        "clearly, with entry points, branches, side effects and risks." + _FORMAT,
        (
            "Find the entry point and follow each call",
            "Record branches, side effects and data flow",
            "Note dependencies in both directions",
        ),
        category="balanced",
    )


class PlannerTool(WorkflowTool):
    spec = WorkflowSpec(
        "planner",
        "Planner",
        "Build a plan step by step, revising as you go; the thread keeps the plan for later tools.",
        "",
        ("Refine or extend the plan", "Check dependencies between steps", "Note risks and open questions"),
        expert=False,
    )
