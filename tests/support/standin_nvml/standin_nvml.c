/*
 * voltana stand-in NVML: a small shared library exporting the NVML entry points that voltana's NVIDIA driver
 * reaches through the real pynvml (ctypes). Built by the test suite, loaded as libnvidia-ml.so.1 (subprocesses:
 * LD_LIBRARY_PATH; in-process tests: pynvml.nvmlLib points at it). No NVIDIA code: written from the public
 * NVML API reference (function names, argument order, return codes as pynvml declares them).
 *
 * Scripted by the key=value file named in $VOLTANA_STANDIN_NVML (re-read when it changes); see
 * docs/guides/gpus.md for the keys. Clock locks and resets, power-limit sets (and, with log_reads=1, energy/power
 * reads) are appended to the file named by `log`; on first use a process replays that log, so a clock locked
 * (or a power limit set) by a process that died is still in force for the next one, as on a real GPU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVICES 16
#define MAX_LIST 256

struct standin_config {
    int device_count;
    char name[96];
    unsigned memory_clock_mhz, min_clock_mhz, max_clock_mhz, clock_step_mhz, default_clock_mhz;
    unsigned arbitrate_max_mhz; /* 0: the locked clock is read back as asked */
    int init_ret, lock_ret, energy_ret, power_ret, energy_fail_ret, set_power_limit_ret;
    unsigned long long power_mw, power_limit_mw, energy_offset_mj;
    unsigned long long power_limit_min_mw, power_limit_max_mw, power_limit_default_mw;
    unsigned refresh_ms;
    int fail_reads[MAX_LIST], n_fail_reads;
    unsigned long long readings_mj[MAX_LIST];
    int n_readings;
    int reset_at_read, dip_at_read;
    unsigned long long dip_mj;
    char log[1024];
    int log_reads;
};

struct standin_device {
    unsigned locked_min, locked_max;
    int locked, energy_reads;
    unsigned long long reset_base_mj;
    unsigned long long power_limit_mw; /* 0: the default power management limit */
};

static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static struct standin_config cfg;
static struct standin_device devices[MAX_DEVICES];
static int init_count = 0, loaded = 0, replayed = 0;
static struct timespec script_mtime;
static off_t script_size = -1;

static int parse_ret(const char *value) {
    if (!strcmp(value, "ok")) return NVML_SUCCESS;
    if (!strcmp(value, "not_supported")) return NVML_ERROR_NOT_SUPPORTED;
    if (!strcmp(value, "no_permission")) return NVML_ERROR_NO_PERMISSION;
    if (!strcmp(value, "driver_not_loaded")) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (!strcmp(value, "gpu_is_lost")) return NVML_ERROR_GPU_IS_LOST;
    if (!strcmp(value, "timeout")) return NVML_ERROR_TIMEOUT;
    if (!strcmp(value, "unknown")) return NVML_ERROR_UNKNOWN;
    return atoi(value);
}

static int parse_list(const char *value, unsigned long long *out, int *ints) {
    int n = 0;
    const char *p = value;
    while (*p && n < MAX_LIST) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p) break;
        if (out) out[n] = v;
        if (ints) ints[n] = (int)v;
        n++;
        p = (*end == ',') ? end + 1 : end;
    }
    return n;
}

static void config_defaults(void) {
    memset(&cfg, 0, sizeof cfg);
    cfg.device_count = 1;
    snprintf(cfg.name, sizeof cfg.name, "NVIDIA A100-SXM4-80GB (stand-in)");
    cfg.memory_clock_mhz = 1593;
    cfg.min_clock_mhz = 210;
    cfg.max_clock_mhz = 1410;
    cfg.clock_step_mhz = 15;
    cfg.default_clock_mhz = 1410;
    cfg.power_mw = 250000;
    cfg.power_limit_mw = 400000; /* an A100-SXM4's 400 W board power */
    cfg.power_limit_min_mw = 100000; /* an A100-SXM4 accepts 100..400 W (nvidia-smi -q: Min/Max Power Limit) */
    cfg.power_limit_max_mw = 400000;
    cfg.power_limit_default_mw = 400000;
    cfg.refresh_ms = 100;
    cfg.energy_offset_mj = 1000000;
    cfg.energy_fail_ret = NVML_ERROR_UNKNOWN;
}

static void config_set(const char *key, const char *value) {
    if (!strcmp(key, "device_count")) cfg.device_count = atoi(value);
    else if (!strcmp(key, "name")) snprintf(cfg.name, sizeof cfg.name, "%s", value);
    else if (!strcmp(key, "memory_clock_mhz")) cfg.memory_clock_mhz = (unsigned)atoi(value);
    else if (!strcmp(key, "min_clock_mhz")) cfg.min_clock_mhz = (unsigned)atoi(value);
    else if (!strcmp(key, "max_clock_mhz")) cfg.max_clock_mhz = (unsigned)atoi(value);
    else if (!strcmp(key, "clock_step_mhz")) cfg.clock_step_mhz = (unsigned)atoi(value);
    else if (!strcmp(key, "default_clock_mhz")) cfg.default_clock_mhz = (unsigned)atoi(value);
    else if (!strcmp(key, "arbitrate_max_mhz")) cfg.arbitrate_max_mhz = (unsigned)atoi(value);
    else if (!strcmp(key, "init")) cfg.init_ret = parse_ret(value);
    else if (!strcmp(key, "lock")) cfg.lock_ret = parse_ret(value);
    else if (!strcmp(key, "energy")) cfg.energy_ret = parse_ret(value);
    else if (!strcmp(key, "power")) cfg.power_ret = parse_ret(value);
    else if (!strcmp(key, "energy_fail_error")) cfg.energy_fail_ret = parse_ret(value);
    else if (!strcmp(key, "power_mw")) cfg.power_mw = strtoull(value, NULL, 10);
    else if (!strcmp(key, "power_limit_mw")) cfg.power_limit_mw = strtoull(value, NULL, 10);
    else if (!strcmp(key, "power_limit_min_mw")) cfg.power_limit_min_mw = strtoull(value, NULL, 10);
    else if (!strcmp(key, "power_limit_max_mw")) cfg.power_limit_max_mw = strtoull(value, NULL, 10);
    else if (!strcmp(key, "power_limit_default_mw")) cfg.power_limit_default_mw = strtoull(value, NULL, 10);
    else if (!strcmp(key, "set_power_limit")) cfg.set_power_limit_ret = parse_ret(value);
    else if (!strcmp(key, "energy_offset_mj")) cfg.energy_offset_mj = strtoull(value, NULL, 10);
    else if (!strcmp(key, "refresh_ms")) cfg.refresh_ms = (unsigned)atoi(value);
    else if (!strcmp(key, "energy_fail_reads")) cfg.n_fail_reads = parse_list(value, NULL, cfg.fail_reads);
    else if (!strcmp(key, "energy_readings_mj")) cfg.n_readings = parse_list(value, cfg.readings_mj, NULL);
    else if (!strcmp(key, "energy_reset_at_read")) cfg.reset_at_read = atoi(value);
    else if (!strcmp(key, "energy_dip_at_read")) {
        char *colon;
        cfg.dip_at_read = (int)strtol(value, &colon, 10);
        cfg.dip_mj = (*colon == ':') ? strtoull(colon + 1, NULL, 10) : 10;
    } else if (!strcmp(key, "log")) snprintf(cfg.log, sizeof cfg.log, "%s", value);
    else if (!strcmp(key, "log_reads")) cfg.log_reads = atoi(value);
}

/* Re-read the script when it changed (or on first use); keeps per-device state. */
static void config_refresh(void) {
    const char *path = getenv("VOLTANA_STANDIN_NVML");
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0) {
        if (!loaded) config_defaults();
        loaded = 1;
        return;
    }
    if (loaded && st.st_mtim.tv_sec == script_mtime.tv_sec && st.st_mtim.tv_nsec == script_mtime.tv_nsec &&
        st.st_size == script_size)
        return;
    FILE *file = fopen(path, "r");
    if (!file) return;
    config_defaults();
    char line[4096];
    while (fgets(line, sizeof line, file)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        char *key = line, *value = eq + 1;
        while (*key == ' ' || *key == '\t') key++;
        char *end = key + strlen(key);
        while (end > key && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        while (*value == ' ' || *value == '\t') value++;
        end = value + strlen(value);
        while (end > value && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        config_set(key, value);
    }
    fclose(file);
    if (cfg.device_count > MAX_DEVICES) cfg.device_count = MAX_DEVICES;
    if (cfg.device_count < 0) cfg.device_count = 0;
    script_mtime = st.st_mtim;
    script_size = st.st_size;
    loaded = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void log_line(const char *fmt_op, int device, unsigned a, unsigned b, int ret) {
    if (!cfg.log[0]) return;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "t=%.6f pid=%d tid=%ld op=%s device=%d min=%u max=%u ret=%d\n", now_s(),
                     (int)getpid(), (long)syscall(SYS_gettid), fmt_op, device, a, b, ret);
    int fd = open(cfg.log, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return;
    ssize_t written = write(fd, buf, (size_t)n); /* one write per line: appends from processes never interleave */
    (void)written;
    close(fd);
}

/* The log is the GPU's persistent clock state: replay the locks and resets of earlier processes. */
static void replay_log(void) {
    if (replayed || !cfg.log[0]) return;
    replayed = 1;
    FILE *file = fopen(cfg.log, "r");
    if (!file) return;
    char line[512], op[32];
    int device, ret;
    unsigned lo, hi;
    while (fgets(line, sizeof line, file)) {
        char *p = strstr(line, " op=");
        if (!p || sscanf(p, " op=%31s device=%d min=%u max=%u ret=%d", op, &device, &lo, &hi, &ret) != 5) continue;
        if (device < 0 || device >= MAX_DEVICES || ret != NVML_SUCCESS) continue;
        if (!strcmp(op, "lock")) {
            devices[device].locked = 1;
            devices[device].locked_min = lo;
            devices[device].locked_max = hi;
        } else if (!strcmp(op, "reset")) {
            devices[device].locked = 0;
        } else if (!strcmp(op, "power_limit")) {
            devices[device].power_limit_mw = hi;
        }
    }
    fclose(file);
}

/* Enter a call: lock, refresh the script; returns NVML_SUCCESS when NVML is initialised. */
static nvmlReturn_t enter(void) {
    pthread_mutex_lock(&mutex);
    config_refresh();
    return init_count > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

static nvmlReturn_t leave(nvmlReturn_t ret) {
    pthread_mutex_unlock(&mutex);
    return ret;
}

static int device_of(void *handle) {
    struct standin_device *dev = (struct standin_device *)handle;
    if (dev < devices || dev >= devices + cfg.device_count) return -1;
    return (int)(dev - devices);
}

static unsigned clock_now(int index) {
    unsigned clock = devices[index].locked ? devices[index].locked_max : cfg.default_clock_mhz;
    if (cfg.arbitrate_max_mhz && clock > cfg.arbitrate_max_mhz) clock = cfg.arbitrate_max_mhz;
    return clock;
}

/* Cumulative mJ at constant power since boot (CLOCK_MONOTONIC), refreshed every refresh_ms as NVML does. */
static unsigned long long counter_now_mj(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long ms = (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL;
    if (cfg.refresh_ms) ms -= ms % cfg.refresh_ms;
    return cfg.energy_offset_mj + (cfg.power_mw * ms) / 1000ULL;
}

/* ---- exported NVML API ---- */

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    enter();
    if (cfg.init_ret != NVML_SUCCESS) return leave(cfg.init_ret);
    replay_log();
    init_count++;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    init_count--;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (!version || length < 16) return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    snprintf(version, length, "standin-550.0");
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned)cfg.device_count;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (!device || index >= (unsigned)cfg.device_count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = &devices[index];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, void **device) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index;
    if (!uuid || !device || sscanf(uuid, "GPU-standin-%d", &index) != 1 || index < 0 || index >= cfg.device_count)
        return leave(NVML_ERROR_NOT_FOUND);
    *device = &devices[index];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetUUID(void *device, char *uuid, unsigned int length) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0 || !uuid) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if ((unsigned)snprintf(uuid, length, "GPU-standin-%d", index) >= length) return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetName(void *device, char *name, unsigned int length) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (device_of(device) < 0 || !name) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if ((unsigned)snprintf(name, length, "%s", cfg.name) >= length) return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetSupportedMemoryClocks(void *device, unsigned int *count, unsigned int *clocks) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (device_of(device) < 0 || !count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!clocks || *count < 1) {
        *count = 1;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    *count = 1;
    clocks[0] = cfg.memory_clock_mhz;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetSupportedGraphicsClocks(void *device, unsigned int memory_mhz, unsigned int *count,
                                                  unsigned int *clocks) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (device_of(device) < 0 || !count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory_mhz != cfg.memory_clock_mhz) return leave(NVML_ERROR_NOT_FOUND);
    unsigned step = cfg.clock_step_mhz ? cfg.clock_step_mhz : 15;
    unsigned n = cfg.max_clock_mhz >= cfg.min_clock_mhz ? (cfg.max_clock_mhz - cfg.min_clock_mhz) / step + 1 : 0;
    if (!clocks || *count < n) {
        *count = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned i = 0; i < n; i++) clocks[i] = cfg.max_clock_mhz - i * step; /* NVML lists them descending */
    *count = n;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetClockInfo(void *device, int type, unsigned int *clock) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0 || !clock) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (type == 2) { /* NVML_CLOCK_MEM */
        *clock = cfg.memory_clock_mhz;
        return leave(NVML_SUCCESS);
    }
    *clock = clock_now(index); /* NVML_CLOCK_GRAPHICS and NVML_CLOCK_SM move together */
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceSetGpuLockedClocks(void *device, unsigned int min_mhz, unsigned int max_mhz) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0 || min_mhz > max_mhz) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (cfg.lock_ret != NVML_SUCCESS) {
        log_line("lock", index, min_mhz, max_mhz, cfg.lock_ret);
        return leave(cfg.lock_ret);
    }
    devices[index].locked = 1;
    devices[index].locked_min = min_mhz;
    devices[index].locked_max = max_mhz;
    log_line("lock", index, min_mhz, max_mhz, NVML_SUCCESS);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceResetGpuLockedClocks(void *device) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (cfg.lock_ret != NVML_SUCCESS) {
        log_line("reset", index, 0, 0, cfg.lock_ret);
        return leave(cfg.lock_ret);
    }
    devices[index].locked = 0;
    log_line("reset", index, 0, 0, NVML_SUCCESS);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(void *device, unsigned int *milliwatts) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0 || !milliwatts) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (cfg.log_reads) log_line("power", index, 0, 0, cfg.power_ret);
    if (cfg.power_ret != NVML_SUCCESS) return leave(cfg.power_ret);
    *milliwatts = (unsigned)cfg.power_mw;
    return leave(NVML_SUCCESS);
}

/* The power management limit in force: the one set last, else the default. */
static unsigned long long management_limit_mw(int index) {
    return devices[index].power_limit_mw ? devices[index].power_limit_mw : cfg.power_limit_default_mw;
}

/* The enforced limit is the lowest of every limiter: the board's (power_limit_mw) and the management limit. */
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(void *device, unsigned int *milliwatts) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0 || !milliwatts) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!cfg.power_limit_mw) return leave(NVML_ERROR_NOT_SUPPORTED);
    unsigned long long limit = cfg.power_limit_mw;
    if (cfg.power_limit_default_mw && management_limit_mw(index) < limit) limit = management_limit_mw(index);
    *milliwatts = (unsigned)limit;
    return leave(NVML_SUCCESS);
}

/* Power management limits: power_limit_default_mw=0 makes them NOT_SUPPORTED (a GPU without power management). */
nvmlReturn_t nvmlDeviceGetPowerManagementLimit(void *device, unsigned int *milliwatts) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0 || !milliwatts) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!cfg.power_limit_default_mw) return leave(NVML_ERROR_NOT_SUPPORTED);
    *milliwatts = (unsigned)management_limit_mw(index);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(void *device, unsigned int *milliwatts) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (device_of(device) < 0 || !milliwatts) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!cfg.power_limit_default_mw) return leave(NVML_ERROR_NOT_SUPPORTED);
    *milliwatts = (unsigned)cfg.power_limit_default_mw;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(void *device, unsigned int *min_mw, unsigned int *max_mw) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    if (device_of(device) < 0 || !min_mw || !max_mw) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!cfg.power_limit_default_mw) return leave(NVML_ERROR_NOT_SUPPORTED);
    *min_mw = (unsigned)cfg.power_limit_min_mw;
    *max_mw = (unsigned)cfg.power_limit_max_mw;
    return leave(NVML_SUCCESS);
}

/* Logged as op=power_limit with the new limit (mW) in max=; NVML has no reset call: a reset sets the default. */
nvmlReturn_t nvmlDeviceSetPowerManagementLimit(void *device, unsigned int limit_mw) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!cfg.power_limit_default_mw) return leave(NVML_ERROR_NOT_SUPPORTED);
    int ret = cfg.set_power_limit_ret;
    if (ret == NVML_SUCCESS && (limit_mw < cfg.power_limit_min_mw || limit_mw > cfg.power_limit_max_mw))
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) devices[index].power_limit_mw = limit_mw;
    log_line("power_limit", index, 0, limit_mw, ret);
    return leave(ret);
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(void *device, unsigned long long *millijoules) {
    if (enter() != NVML_SUCCESS) return leave(NVML_ERROR_UNINITIALIZED);
    int index = device_of(device);
    if (index < 0 || !millijoules) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (cfg.energy_ret != NVML_SUCCESS) {
        if (cfg.log_reads) log_line("energy", index, 0, 0, cfg.energy_ret);
        return leave(cfg.energy_ret);
    }
    struct standin_device *dev = &devices[index];
    int read = ++dev->energy_reads; /* 1-based, per device */
    for (int i = 0; i < cfg.n_fail_reads; i++) {
        if (cfg.fail_reads[i] == read) {
            if (cfg.log_reads) log_line("energy", index, 0, 0, cfg.energy_fail_ret);
            return leave(cfg.energy_fail_ret);
        }
    }
    unsigned long long value;
    if (cfg.n_readings) {
        value = cfg.readings_mj[read <= cfg.n_readings ? read - 1 : cfg.n_readings - 1];
    } else {
        value = counter_now_mj();
        if (cfg.reset_at_read && read == cfg.reset_at_read) dev->reset_base_mj = value; /* driver reset: from 0 */
        value -= dev->reset_base_mj;
    }
    if (cfg.dip_at_read && read == cfg.dip_at_read) value = value > cfg.dip_mj ? value - cfg.dip_mj : 0;
    if (cfg.log_reads) log_line("energy", index, 0, 0, NVML_SUCCESS);
    *millijoules = value;
    return leave(NVML_SUCCESS);
}

/* Test hook (not NVML): forget this process's state, as a fresh process would have it. */
void voltana_standin_reset(void) {
    pthread_mutex_lock(&mutex);
    init_count = 0;
    loaded = 0;
    replayed = 0;
    script_size = -1;
    memset(devices, 0, sizeof devices);
    pthread_mutex_unlock(&mutex);
}
