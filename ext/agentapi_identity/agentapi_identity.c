/*
 * agentapi_identity: a per-transaction cache of the acting user's identity.
 *
 * agentapi-db's row-level security policies need the acting user's id,
 * organization, admin flag and email. The portable schema derives them from
 * `users` in SECURITY DEFINER plpgsql helpers, once per policy reference and
 * statement: about a dozen index lookups for one session start. With this
 * module the helpers (agentapi_auth.user_id() and friends) become inlined SQL
 * calls of the functions below, which give the same answers more cheaply:
 *
 *  - The answer comes from public.users, by the same rule as the portable
 *    helpers: the row whose id agentapi_auth.requested_user_id() gives (it
 *    parses app.user_id and, once a context key exists, checks the token in
 *    app.context_token), if is_active; admin when role = 'admin'. That SQL
 *    function is called once per transaction and pair of settings, so the
 *    token is verified once per transaction, not once per policy reference.
 *  - It is read with the snapshot of the statement that asks, as the portable
 *    helpers read it. The first call of a transaction looks the row up
 *    through users_pkey and remembers where the row version is (its TID) and
 *    the snapshot it was checked against. A later call under a snapshot that
 *    sees the same (same xmin, xmax, running and sub-transaction ids, command
 *    id: the statement's other policy references, typically) reuses the
 *    answer. Under any other snapshot it
 *    fetches the row version at that TID: if it is still visible and still the
 *    requested user's, its values are taken again (a heap fetch, no index
 *    descent); otherwise it looks the user up through the index again. So a
 *    change to users, committed by another transaction or made by this one, is
 *    seen exactly when the portable helpers would see it.
 *  - The answer is keyed by the exact app.user_id and app.context_token texts
 *    and the backend's local transaction id, and dropped at the end of every transaction and when a
 *    subtransaction aborts (a row version it made is gone).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "storage/itemptr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/snapshot.h"
#include "utils/syscache.h"
#include "utils/uuid.h"

PG_MODULE_MAGIC;

/* A relation's physical file: RelFileNode before PostgreSQL 16, RelFileLocator since. */
#if PG_VERSION_NUM >= 160000
typedef RelFileLocator PhysicalFile;
#define PHYSICAL_FILE(rel) ((rel)->rd_locator)
#define SAME_PHYSICAL_FILE(a, b) RelFileLocatorEquals(a, b)
#else
typedef RelFileNode PhysicalFile;
#define PHYSICAL_FILE(rel) ((rel)->rd_node)
#define SAME_PHYSICAL_FILE(a, b) RelFileNodeEquals(a, b)
#endif

PG_FUNCTION_INFO_V1(agentapi_identity_user_id);
PG_FUNCTION_INFO_V1(agentapi_identity_organization_id);
PG_FUNCTION_INFO_V1(agentapi_identity_admin_organization_id);
PG_FUNCTION_INFO_V1(agentapi_identity_user_email);

void		_PG_init(void);

/* What public.users said for one app.user_id text in one transaction. */
typedef struct IdentityCache
{
	bool		valid;
	LocalTransactionId lxid;
	char	   *request;		/* app.user_id text, NULL if unset */
	char	   *token;			/* app.context_token text, NULL if unset */
	bool		parsed;			/* requested_user_id() gave an id */
	pg_uuid_t	requested;
	/* the users row version the answer came from, if one was visible */
	bool		have_row;
	ItemPointerData tid;
	/*
	 * The snapshot the answer was last checked against: a copy of its fields,
	 * with xip and subxip copied into TopMemoryContext (the rest unused).
	 */
	bool		checked;
	SnapshotData snap;
	/* the physical relation the TID points into */
	PhysicalFile file;
	/* the answer */
	bool		found;			/* an active user */
	pg_uuid_t	user_id;
	pg_uuid_t	organization_id;
	bool		is_admin;
	char	   *email;			/* NULL if none */
} IdentityCache;

/* The parts of public.users this module reads (per backend, until invalidated). */
typedef struct UsersTable
{
	bool		valid;
	Oid			relid;
	Oid			pkey;
	AttrNumber	id;
	AttrNumber	organization_id;
	AttrNumber	role;
	AttrNumber	is_active;
	AttrNumber	email;
} UsersTable;

static IdentityCache cache;
static UsersTable users_table;

static LocalTransactionId
current_lxid(void)
{
#if PG_VERSION_NUM >= 170000
	return MyProc->vxid.lxid;
#else
	return MyProc->lxid;
#endif
}

static void
forget_snapshot(void)
{
	cache.checked = false;
	if (cache.snap.xip != NULL)
		pfree(cache.snap.xip);
	if (cache.snap.subxip != NULL)
		pfree(cache.snap.subxip);
	cache.snap.xip = cache.snap.subxip = NULL;
}

static void
forget_answer(void)
{
	cache.have_row = false;
	forget_snapshot();
	cache.found = false;
	cache.is_admin = false;
	if (cache.email != NULL)
	{
		pfree(cache.email);
		cache.email = NULL;
	}
}

static void
invalidate(void)
{
	forget_answer();
	cache.valid = false;
	cache.parsed = false;
	if (cache.request != NULL)
	{
		pfree(cache.request);
		cache.request = NULL;
	}
	if (cache.token != NULL)
	{
		pfree(cache.token);
		cache.token = NULL;
	}
}

static void
on_xact(XactEvent event, void *arg)
{
	invalidate();
}

static void
on_subxact(SubXactEvent event, SubTransactionId mySubid,
		   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		invalidate();
}

/* Any change to a relation's definition: look public.users up again. */
static void
on_relcache(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == users_table.relid || relid == users_table.pkey)
		users_table.valid = false;
}

void
_PG_init(void)
{
	memset(&cache, 0, sizeof(cache));
	memset(&users_table, 0, sizeof(users_table));
	RegisterXactCallback(on_xact, NULL);
	RegisterSubXactCallback(on_subxact, NULL);
	CacheRegisterRelcacheCallback(on_relcache, (Datum) 0);
}

static bool
same_text(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == NULL && b == NULL;
	return strcmp(a, b) == 0;
}

/*
 * The id agentapi_auth.requested_user_id() gives for the current settings: the
 * SQL function (SECURITY DEFINER, owned by agentapi_owner) parses app.user_id
 * and verifies app.context_token, so this module and the portable helpers
 * share one rule. It is looked up by its qualified name, in a schema the
 * application cannot create objects in.
 */
static bool
verified_request(pg_uuid_t *out)
{
	List	   *name = list_make2(makeString("agentapi_auth"), makeString("requested_user_id"));
	Oid			fn = LookupFuncName(name, 0, NULL, false);
	FmgrInfo	flinfo;
	Datum		result;

	LOCAL_FCINFO(fcinfo, 0);

	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 0, InvalidOid, NULL, NULL);
	result = FunctionCallInvoke(fcinfo);
	if (fcinfo->isnull)
		return false;
	memcpy(out, DatumGetUUIDP(result), sizeof(pg_uuid_t));
	return true;
}

static Snapshot
statement_snapshot(void)
{
	if (!ActiveSnapshotSet())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("agentapi_identity: no active snapshot to read public.users with")));
	return GetActiveSnapshot();
}

/*
 * Whether the answer was already checked against a snapshot that sees the
 * same: an MVCC snapshot with equal bounds, running transactions,
 * sub-transactions and command id. (snapXactCompletionCount cannot serve: the
 * active snapshot is a copy, and CopySnapshot() zeroes it.) This transaction's
 * own state is the rest of visibility: an aborted subtransaction empties the
 * cache, and a committed one changes nothing.
 */
static bool
checked_against(Snapshot snapshot)
{
	return cache.checked &&
		snapshot->snapshot_type == SNAPSHOT_MVCC &&
		snapshot->xmin == cache.snap.xmin &&
		snapshot->xmax == cache.snap.xmax &&
		snapshot->curcid == cache.snap.curcid &&
		snapshot->suboverflowed == cache.snap.suboverflowed &&
		snapshot->takenDuringRecovery == cache.snap.takenDuringRecovery &&
		snapshot->xcnt == cache.snap.xcnt &&
		snapshot->subxcnt == cache.snap.subxcnt &&
		(snapshot->xcnt == 0 ||
		 memcmp(snapshot->xip, cache.snap.xip, snapshot->xcnt * sizeof(TransactionId)) == 0) &&
		(snapshot->subxcnt <= 0 ||
		 memcmp(snapshot->subxip, cache.snap.subxip,
				snapshot->subxcnt * sizeof(TransactionId)) == 0);
}

static TransactionId *
copy_xids(const TransactionId *xids, int count)
{
	TransactionId *copy;

	if (count <= 0)
		return NULL;
	copy = MemoryContextAlloc(TopMemoryContext, count * sizeof(TransactionId));
	memcpy(copy, xids, count * sizeof(TransactionId));
	return copy;
}

static void
remember_snapshot(Snapshot snapshot)
{
	TransactionId *xip;
	TransactionId *subxip;

	forget_snapshot();
	if (snapshot->snapshot_type != SNAPSHOT_MVCC)
		return;
	/* Copied first: cache.snap never points into memory that is not ours. */
	xip = copy_xids(snapshot->xip, (int) snapshot->xcnt);
	subxip = copy_xids(snapshot->subxip, snapshot->subxcnt);
	cache.snap = *snapshot;
	cache.snap.xip = xip;
	cache.snap.subxip = subxip;
	cache.checked = true;
}

static AttrNumber
users_column(Relation users, const char *column, Oid type)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(users), column);
	Oid			actual;

	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("agentapi_identity: public.users has no column \"%s\"", column)));
	actual = TupleDescAttr(RelationGetDescr(users), attnum - 1)->atttypid;
	if (type == InvalidOid ? !type_is_enum(actual) : actual != type)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("agentapi_identity: public.users.%s has an unexpected type", column)));
	return attnum;
}

/*
 * Opens public.users (AccessShareLock, kept to the end of the transaction, as a
 * query's) and, the first time or after its definition changed, checks and
 * remembers the columns and the primary key this module reads.
 */
static Relation
open_users(void)
{
	Oid			relid;
	Relation	users;
	Relation	pkey;

	relid = RangeVarGetRelid(makeRangeVar("public", "users", -1), AccessShareLock, true);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("agentapi_identity needs the table public.users"),
				 errhint("Install the extension through database/schema.sql.")));
	users = table_open(relid, NoLock);
	if (users_table.valid && users_table.relid == relid)
		return users;

	users_table.valid = false;
	users_table.relid = relid;
	users_table.pkey = get_relname_relid("users_pkey", RelationGetNamespace(users));
	users_table.id = users_column(users, "id", UUIDOID);
	users_table.organization_id = users_column(users, "organization_id", UUIDOID);
	users_table.role = users_column(users, "role", InvalidOid);
	users_table.is_active = users_column(users, "is_active", BOOLOID);
	users_table.email = users_column(users, "email", TEXTOID);
	if (!OidIsValid(users_table.pkey))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("agentapi_identity needs the primary key public.users_pkey")));
	pkey = index_open(users_table.pkey, AccessShareLock);
	if (pkey->rd_index->indrelid != relid || !pkey->rd_index->indisprimary ||
		!pkey->rd_index->indisunique || !pkey->rd_index->indimmediate ||
		!pkey->rd_index->indisvalid || pkey->rd_rel->relam != BTREE_AM_OID ||
		pkey->rd_index->indnkeyatts != 1 ||
		pkey->rd_index->indkey.values[0] != users_table.id ||
		RelationGetIndexPredicate(pkey) != NIL || RelationGetIndexExpressions(pkey) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("agentapi_identity: users_pkey is not the immediate, valid btree primary key of public.users (id)")));
	index_close(pkey, NoLock);
	users_table.valid = true;
	return users;
}

/* Whether an enum value of users.role is the label 'admin'. */
static bool
is_admin_label(Oid value)
{
	HeapTuple	tuple = SearchSysCache1(ENUMOID, ObjectIdGetDatum(value));
	bool		admin;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for enum value %u", value);
	admin = strcmp(NameStr(((Form_pg_enum) GETSTRUCT(tuple))->enumlabel), "admin") == 0;
	ReleaseSysCache(tuple);
	return admin;
}

/*
 * Takes the answer from a visible row version of public.users, if it is the
 * requested user's; returns false (and takes nothing) if it is another row.
 */
static bool
take_row(Relation users, TupleTableSlot *slot)
{
	const UsersTable *table = &users_table;
	bool		isnull;
	Datum		value;

	value = slot_getattr(slot, table->id, &isnull);
	if (isnull || memcmp(DatumGetUUIDP(value), &cache.requested, sizeof(pg_uuid_t)) != 0)
		return false;

	forget_answer();
	cache.have_row = true;
	ItemPointerCopy(&slot->tts_tid, &cache.tid);
	cache.file = PHYSICAL_FILE(users);
	value = slot_getattr(slot, table->is_active, &isnull);
	if (isnull || !DatumGetBool(value))
		return true;			/* the user exists but is not active: no identity */

	value = slot_getattr(slot, table->organization_id, &isnull);
	if (isnull)
		return true;			/* cannot happen: the column is NOT NULL */
	memcpy(&cache.user_id, &cache.requested, sizeof(pg_uuid_t));
	memcpy(&cache.organization_id, DatumGetUUIDP(value), sizeof(pg_uuid_t));
	value = slot_getattr(slot, table->role, &isnull);
	cache.is_admin = !isnull && is_admin_label(DatumGetObjectId(value));
	value = slot_getattr(slot, table->email, &isnull);
	if (!isnull)
		cache.email = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(value));
	cache.found = true;
	return true;
}

/* Looks the requested user up through users_pkey with `snapshot`. */
static void
look_up(Snapshot snapshot)
{
	Relation	users;
	Relation	pkey;
	IndexScanDesc scan;
	ScanKeyData key;
	TupleTableSlot *slot;

	forget_answer();
	users = open_users();
	pkey = index_open(users_table.pkey, AccessShareLock);
	slot = table_slot_create(users, NULL);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(&cache.requested));
#if PG_VERSION_NUM >= 180000
	scan = index_beginscan(users, pkey, snapshot, NULL, 1, 0);
#else
	scan = index_beginscan(users, pkey, snapshot, 1, 0);
#endif
	index_rescan(scan, &key, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
		(void) take_row(users, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(pkey, NoLock);
	table_close(users, NoLock);
	remember_snapshot(snapshot);
}

/*
 * Checks the remembered row version under `snapshot`: if it is still visible
 * (and the requested user's), takes its values again; otherwise looks up.
 */
static void
recheck(Snapshot snapshot)
{
	Relation	users;
	TupleTableSlot *slot;
	bool		current = false;

	if (cache.have_row)
	{
		users = open_users();
		/* A rewrite by this transaction (TRUNCATE, CLUSTER ...) moved every row. */
		if (SAME_PHYSICAL_FILE(PHYSICAL_FILE(users), cache.file))
		{
			slot = table_slot_create(users, NULL);
			current = table_tuple_fetch_row_version(users, &cache.tid, snapshot, slot) &&
				take_row(users, slot);
			ExecDropSingleTupleTableSlot(slot);
		}
		table_close(users, NoLock);
	}
	if (current)
		remember_snapshot(snapshot);
	else
		look_up(snapshot);
}

/* The identity for the current app.user_id under the statement's snapshot. */
static const IdentityCache *
identity(void)
{
	const char *request = GetConfigOption("app.user_id", true, false);
	const char *token = GetConfigOption("app.context_token", true, false);
	Snapshot	snapshot;

	if (!(cache.valid && cache.lxid == current_lxid() && same_text(request, cache.request) &&
		  same_text(token, cache.token)))
	{
		invalidate();
		cache.parsed = verified_request(&cache.requested);
		if (request != NULL)
			cache.request = MemoryContextStrdup(TopMemoryContext, request);
		if (token != NULL)
			cache.token = MemoryContextStrdup(TopMemoryContext, token);
		cache.lxid = current_lxid();
		cache.valid = true;
	}
	if (!cache.parsed)
		return &cache;			/* unset, empty or malformed: nobody */

	snapshot = statement_snapshot();
	if (!checked_against(snapshot))
	{
		/* Until the answer is complete, a failure must leave nothing behind. */
		cache.valid = false;
		recheck(snapshot);
		cache.valid = true;
	}
	return &cache;
}

static Datum
uuid_datum(const pg_uuid_t *value)
{
	pg_uuid_t  *copy = (pg_uuid_t *) palloc(sizeof(pg_uuid_t));

	memcpy(copy, value, sizeof(pg_uuid_t));
	return UUIDPGetDatum(copy);
}

Datum
agentapi_identity_user_id(PG_FUNCTION_ARGS)
{
	const IdentityCache *id = identity();

	if (!id->found)
		PG_RETURN_NULL();
	return uuid_datum(&id->user_id);
}

Datum
agentapi_identity_organization_id(PG_FUNCTION_ARGS)
{
	const IdentityCache *id = identity();

	if (!id->found)
		PG_RETURN_NULL();
	return uuid_datum(&id->organization_id);
}

Datum
agentapi_identity_admin_organization_id(PG_FUNCTION_ARGS)
{
	const IdentityCache *id = identity();

	if (!id->found || !id->is_admin)
		PG_RETURN_NULL();
	return uuid_datum(&id->organization_id);
}

Datum
agentapi_identity_user_email(PG_FUNCTION_ARGS)
{
	const IdentityCache *id = identity();

	if (!id->found || id->email == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(id->email));
}
