// Metriport's own validation, run in Node from the installed npm packages (@metriport/api-sdk,
// @metriport/shared, their zod, dayjs and validator): the oracle the fake's rules are compared with.
//
// stdin: {"cases": [{"schema": "<name>", "value": <json>}, ...]}
// stdout: [{"ok": bool, "issues": [{"message", "path"}], "value"?: any}, ...] in the same order.
//
// Schemas: the SDK's demographicsSchema, patientCreateSchema, resourceSchema, documentQueryBodySchema;
// @metriport/shared's networkQueryBodySchema and networkQueryStatusDtoSchema (what the SDK's startNetworkQuery /
// getNetworkQueryStatus parse the answer with), and `webhook`: the option of @metriport/shared's
// webhookRequestSchema whose meta.type takes the message's type (one of the 17); the API's cxRequestMetadataSchema,
// updateSettingsSchema and the contribution bundleSchema are rebuilt here from
// packages/api/src/routes/medical/schemas/request-metadata.ts, packages/api/src/routes/settings.ts and
// packages/api/src/routes/medical/schemas/fhir.ts (the API package is not published); plus the bare helpers
// (dayjs date parsing, isEmailValid).
'use strict';
const sdk = require('@metriport/api-sdk');
const shared = require('@metriport/shared');
const sharedDate = require('@metriport/shared/common/date');
const { z } = require('zod');
const dayjs = require('dayjs');
const utc = require('dayjs/plugin/utc');
dayjs.extend(utc);

const cxRequestMetadataSchema = z.object({
  metadata: z
    .record(z.string().min(1).max(40), z.string().max(500))
    .optional()
    .refine((record) => (record ? Object.keys(record).length <= 50 : true), {
      message: 'Record has too many properties',
      path: ['meta'],
    }),
});
const mrSectionsKeys = ['reports', 'conditions', 'medications', 'allergies', 'procedures', 'social-history', 'vitals',
  'labs', 'observations', 'immunizations', 'family-member-history', 'related-persons', 'tasks', 'coverages',
  'encounters', 'documents'];
const updateSettingsSchema = z
  .object({
    webhookUrl: z.string().url().max(2048).or(z.literal('').nullable().optional()),
    mrFilters: z
      .array(z.object({
        key: z.enum(mrSectionsKeys),
        dateFilter: z.object({
          from: z.string().refine((v) => dayjs(v, 'YYYY-MM-DD', true).isValid()).optional(),
          to: z.string().refine((v) => dayjs(v, 'YYYY-MM-DD', true).isValid()).optional(),
        }).optional(),
        stringFilter: z.string().optional(),
      }))
      .min(mrSectionsKeys.length)
      .optional(),
  })
  .strict();

// api routes/medical/schemas/fhir.ts: the body of PUT /patient/:id/consolidated
const contributionBundleSchema = z.object({
  resourceType: z.enum(['Bundle']),
  type: z.enum(['collection', 'searchset']),
  entry: z.array(z.object({ resource: z.any().refine((v) => v !== undefined, { message: 'Resource is required' }) })),
});
const medical = require('@metriport/shared/medical');
const networkQuery = require('@metriport/shared/domain/network-query');
// a webhook message judged by the one option of webhookRequestSchema its meta.type selects
const webhookSchema = {
  safeParse(body) {
    const type = body && body.meta && body.meta.type;
    const typeOk = medical.webhookTypeSchema.safeParse(type);
    if (!typeOk.success) return typeOk;
    const options = medical.webhookRequestSchema._def.options.filter((o) => o.shape.meta.shape.type.safeParse(type).success);
    if (options.length !== 1) throw new Error(`${options.length} schemas take the type ${type}`);
    return options[0].safeParse(body);
  },
};

const SCHEMAS = {
  demographics: sdk.demographicsSchema,
  patientCreate: sdk.patientCreateSchema,
  resources: sdk.resourceSchema,
  conversionType: z.enum(sdk.consolidationConversionType),
  documentQueryBody: sdk.documentQueryBodySchema,
  cxRequestMetadata: cxRequestMetadataSchema,
  updateSettings: updateSettingsSchema,
  address: sdk.addressSchema,
  contact: sdk.contactSchema,
  networkQueryBody: networkQuery.networkQueryBodySchema,
  networkQueryStatus: networkQuery.networkQueryStatusDtoSchema,
  contributionBundle: contributionBundleSchema,
  webhook: webhookSchema,
};

const HELPERS = {
  // dayjs.utc(value).valueOf() (null when invalid): what isValidISODate / the future check see
  dayjs: (v) => { const d = sharedDate.buildDayjs(v); return d.isValid() ? d.valueOf() : null; },
  newDate: (v) => { const t = new Date(v).getTime(); return Number.isNaN(t) ? null : t; },
  isValidISODate: (v) => sharedDate.isValidISODate(v),
  isEmailValid: (v) => shared.isEmailValid(v),
  string: (v) => String(v),
};

function run(c) {
  if (HELPERS[c.schema]) {
    try {
      return { ok: true, value: HELPERS[c.schema](c.value) };
    } catch (err) {
      return { ok: false, error: String(err && err.message) };
    }
  }
  const schema = SCHEMAS[c.schema];
  if (!schema) throw new Error('unknown schema ' + c.schema);
  try {
    const r = schema.safeParse(c.value);
    if (r.success) return { ok: true, issues: [], value: r.data };
    return { ok: false, issues: r.error.issues.map((i) => ({ message: i.message, path: i.path })) };
  } catch (err) {
    // a refinement that throws (e.g. encodeURI on a lone surrogate): Metriport would answer 500
    return { ok: false, issues: [], error: String(err && err.message) };
  }
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => (input += c));
process.stdin.on('end', () => {
  const { cases } = JSON.parse(input);
  process.stdout.write(JSON.stringify(cases.map(run)));
});
