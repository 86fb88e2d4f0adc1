/*
 * frame_decoder: a 12-byte binary sensor frame -> telemetry (a preprocess plugin).
 *
 *   bytes  type                 meaning                                   key
 *   0-3    uint32 big-endian    epoch seconds (0: none, use arrival)      ts
 *   4-5    int16  big-endian    temperature x 100 in degC (-32768: none)  temperature
 *   6-7    uint16 big-endian    relative humidity x 100 in % (0xFFFF: none, > 10000: bad frame)
 *                                                                         humidity
 *   8-9    uint16 big-endian    battery in mV                             battery_mv
 *   10     uint8                status flags: bit 0 alarm, bit 1 low battery, bit 2 tamper,
 *                               bit 3 button; bits 4-7 reserved           status
 *   11     uint8                checksum: XOR of bytes 0-10
 *
 * e.g. 65 5f 2a 80 | 08 66 | 11 a0 | 0b b8 | 01 | fd  ->
 *      {"ts":1700735616,"temperature":21.5,"humidity":45.12,"battery_mv":3000,"status":1}
 *
 * Config: {"flags": true} adds "alarm", "low_battery", "tamper" and "button" booleans.
 * A frame of another length, a checksum mismatch or a humidity over 100 % is {"error": ...} for that
 * message alone; the first bad frame of each call is logged (warn).
 */
#include "fluxiot_plugin.h"

#define FRAME_LEN 12

static int flags_wanted;
static int logged;

static int setup(const fx_config *cfg, const char **error) {
    (void)error;
    flags_wanted = fx_config_bool(cfg, "flags", 0);
    logged = 0;
    return 0;
}

/* Logs the first bad frame of each call (warn); the others only get their {"error": ...}. */
static void bad_frame(const char *kind) {
    if (!logged) {
        fx_log(FX_WARN, kind);
        logged = 1;
    }
}

static void handle(const fx_config *cfg, const fx_message *msg, fx_buf *out) {
    (void)cfg;
    const uint8_t *f = msg->payload;
    if (msg->payload_len != FRAME_LEN) {
        fx_buf_puts(out, "{\"error\":\"frame is ");
        fx_buf_int(out, (int64_t)msg->payload_len);
        fx_buf_puts(out, " bytes, expected 12\"}");
        bad_frame("bad frame: wrong length");
        return;
    }
    uint8_t sum = 0;
    for (int i = 0; i < FRAME_LEN - 1; i++) sum ^= f[i];
    if (sum != f[11]) {
        static const char hex[] = "0123456789abcdef";
        char text[] = "checksum mismatch: frame says 0x.., bytes give 0x..";
        text[32] = hex[f[11] >> 4];
        text[33] = hex[f[11] & 15];
        text[49] = hex[sum >> 4];
        text[50] = hex[sum & 15];
        fx_result_error(out, text);
        bad_frame("bad frame: checksum mismatch");
        return;
    }
    uint32_t ts = ((uint32_t)f[0] << 24) | ((uint32_t)f[1] << 16) | ((uint32_t)f[2] << 8) | f[3];
    int16_t temperature = (int16_t)(((uint16_t)f[4] << 8) | f[5]);
    uint16_t humidity = (uint16_t)(((uint16_t)f[6] << 8) | f[7]);
    uint16_t battery = (uint16_t)(((uint16_t)f[8] << 8) | f[9]);
    uint8_t status = f[10];
    if (humidity != 0xFFFF && humidity > 10000) {
        fx_result_error(out, "humidity over 100 %");
        bad_frame("bad frame: humidity over 100 %");
        return;
    }
    fx_obj o = fx_obj_begin(out);
    if (ts) fx_obj_int(&o, "ts", ts);
    if (temperature != -32768) fx_obj_number(&o, "temperature", temperature / 100.0, 2);
    if (humidity != 0xFFFF) fx_obj_number(&o, "humidity", humidity / 100.0, 2);
    fx_obj_int(&o, "battery_mv", battery);
    fx_obj_int(&o, "status", status);
    if (flags_wanted) {
        fx_obj_bool(&o, "alarm", status & 1);
        fx_obj_bool(&o, "low_battery", status & 2);
        fx_obj_bool(&o, "tamper", status & 4);
        fx_obj_bool(&o, "button", status & 8);
    }
    fx_obj_end(&o);
}

FLUXIOT_PLUGIN(setup, handle)
