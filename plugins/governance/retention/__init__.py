"""The retention sweep (policy 6): the data map's retention rules executed in bounded batches.

:mod:`governance.retention.engine` runs the statements :func:`governance.datamap.plans.build_retention_plan`
builds (one plan, one SQL), per target (a table with its rules in a fixed order, or an object
prefix); :mod:`governance.retention.holds` turns legal holds into the values the statements bind;
:mod:`governance.retention.objects` deletes objects with every version;
:mod:`governance.retention.items` keeps DynamoDB items' TTL within their rule (action ``ttl``);
:mod:`governance.retention.checks` refuses bad input before anything changes.
"""
