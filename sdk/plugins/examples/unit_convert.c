/*
 * unit_convert: converts telemetry to metric units (a preprocess plugin for JSON telemetry).
 *
 * The payload is telemetry as a device sends it: a JSON object ({"key": value, ..., optional "ts"})
 * or a list of them. The result has the same shape, with:
 *
 * 1. Keys by suffix (unless config "suffixes" is false):
 *      <name>_f     degF -> <name>      degC   (v - 32) * 5 / 9
 *      <name>_k     K    -> <name>      degC   v - 273.15
 *      <name>_mph   mph  -> <name>_kmh  km/h   v * 1.609344
 *      <name>_psi   psi  -> <name>_kpa  kPa    v * 6.894757
 *      <name>_inhg  inHg -> <name>_hpa  hPa    v * 33.8639
 *      <name>_in    in   -> <name>_mm   mm     v * 25.4
 *    e.g. {"temperature_f": 98.6} -> {"temperature": 37}
 * 2. Named keys in a given temperature unit, converted in place to degC:
 *      config {"from": "fahrenheit" | "kelvin" | "celsius", "keys": ["temperature", ...]}
 *    ("keys" defaults to ["temperature"]), e.g. {"temperature": 212} -> {"temperature": 100}.
 * Converted values are rounded to config "decimals" (0-6, default 2) digits. Values that are not
 * numbers, "ts" and every other key are copied as they are. A payload that is not a JSON object or
 * a list of objects is {"error": ...} for that message; an unknown "from" unit is an error for every
 * message of the call.
 */
#include "fluxiot_plugin.h"

enum unit { CELSIUS, FAHRENHEIT, KELVIN };

static int from_unit;
static int use_suffixes;
static int decimals;
static fx_str named_keys; /* the JSON text of config "keys", or empty for ["temperature"] */

static int setup(const fx_config *cfg, const char **error) {
    fx_str from;
    from_unit = CELSIUS;
    if (fx_config_string(cfg, "from", &from)) {
        if (fx_str_eq(from, "fahrenheit")) from_unit = FAHRENHEIT;
        else if (fx_str_eq(from, "kelvin")) from_unit = KELVIN;
        else if (!fx_str_eq(from, "celsius")) {
            *error = "config \"from\" must be \"fahrenheit\", \"kelvin\" or \"celsius\"";
            return 1;
        }
    }
    use_suffixes = fx_config_bool(cfg, "suffixes", 1);
    double d = fx_config_number(cfg, "decimals", 2);
    decimals = d < 0 ? 0 : d > 6 ? 6 : (int)d;
    named_keys.ptr = 0;
    named_keys.len = 0;
    fx_json j;
    if (fx_config_find(cfg, "keys", &j) && !fx_json_raw(&j, &named_keys)) {
        *error = "config \"keys\" is not valid JSON";
        return 1;
    }
    return 0;
}

static int is_named(fx_str key) {
    if (!named_keys.ptr) return fx_str_eq(key, "temperature");
    fx_json j = fx_json_over(named_keys.ptr, named_keys.len);
    fx_iter it;
    fx_str name;
    if (!fx_json_enter(&j, '[', &it)) return 0;
    while (fx_iter_next(&it, 0)) {
        if (!fx_json_string(&j, &name)) return 0;
        if (name.len == key.len && !__builtin_memcmp(name.ptr, key.ptr, key.len)) return 1;
    }
    return 0;
}

typedef struct {
    const char *suffix;
    const char *new_suffix;
    double scale;
    double offset; /* v * scale + offset */
} rule;

static const rule rules[] = {
    {"_f", "", 5.0 / 9.0, -32.0 * 5.0 / 9.0},
    {"_k", "", 1.0, -273.15},
    {"_mph", "_kmh", 1.609344, 0.0},
    {"_psi", "_kpa", 6.894757, 0.0},
    {"_inhg", "_hpa", 33.8639, 0.0},
    {"_in", "_mm", 25.4, 0.0},
};

static void write_key(fx_obj *o, const char *raw, size_t len, const char *suffix) {
    if (o->count++) fx_buf_putc(o->b, ',');
    fx_buf_putc(o->b, '"');
    fx_buf_write(o->b, raw, len); /* the key's JSON text: escapes stay valid */
    fx_buf_puts(o->b, suffix);
    fx_buf_puts(o->b, "\":");
}

/* Convert one object; 0 if the text is not an object. */
static int convert_object(fx_json *j, fx_buf *out) {
    fx_iter it;
    fx_str key, raw;
    if (!fx_json_enter(j, '{', &it)) return 0;
    fx_obj o = fx_obj_begin(out);
    while (fx_iter_next(&it, &key)) {
        int c = fx_json_peek(j);
        int numeric = c == '-' || (c >= '0' && c <= '9');
        if (!fx_json_raw(j, &raw)) return 0;
        double v;
        fx_json num = fx_json_over(raw.ptr, raw.len);
        if (numeric && fx_json_number(&num, &v) && !fx_str_eq(key, "ts")) {
            if (from_unit != CELSIUS && is_named(key)) {
                v = from_unit == FAHRENHEIT ? (v - 32.0) * 5.0 / 9.0 : v - 273.15;
                write_key(&o, key.ptr, key.len, "");
                fx_buf_number(out, v, decimals);
                continue;
            }
            if (use_suffixes) {
                const rule *match = 0;
                for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
                    if (fx_str_ends_with(key, rules[r].suffix) && key.len > fx_strlen(rules[r].suffix)) {
                        match = &rules[r];
                        break;
                    }
                }
                if (match) {
                    write_key(&o, key.ptr, key.len - fx_strlen(match->suffix), match->new_suffix);
                    fx_buf_number(out, v * match->scale + match->offset, decimals);
                    continue;
                }
            }
        }
        write_key(&o, key.ptr, key.len, "");
        fx_buf_write(out, raw.ptr, raw.len);
    }
    if (j->err) return 0;
    fx_obj_end(&o);
    return 1;
}

static void handle(const fx_config *cfg, const fx_message *msg, fx_buf *out) {
    (void)cfg;
    fx_json j = fx_json_over((const char *)msg->payload, msg->payload_len);
    size_t mark = out->len;
    int ok;
    if (fx_json_peek(&j) == '[') {
        fx_iter it;
        fx_json_enter(&j, '[', &it);
        fx_buf_putc(out, '[');
        int n = 0;
        ok = 1;
        while (ok && fx_iter_next(&it, 0)) {
            if (n++) fx_buf_putc(out, ',');
            ok = convert_object(&j, out);
        }
        ok = ok && !j.err && n > 0;
        fx_buf_putc(out, ']');
    } else {
        ok = convert_object(&j, out);
    }
    if (ok && fx_json_peek(&j) != -1) ok = 0; /* trailing text */
    if (!ok) {
        out->len = mark; /* drop what was written */
        fx_result_error(out, "payload is not a JSON object or a list of objects");
    }
}

FLUXIOT_PLUGIN(setup, handle)
