/*
 * kexec-lab-helper: the guest half of the lab's control channel.
 *
 * Runs in the lab's initramfs (primary and capture kernel alike) on the
 * control serial port (ttyS1).  It reads one command per text line from the
 * host and answers with one JSON object per line.  It is static and tiny
 * because the guest has nothing but busybox; it makes the syscalls itself so
 * that the lab tests the kernel, not a userspace tool.
 *
 * Commands (host -> guest, space separated, the last field may hold spaces):
 *   hello                               re-send the hello message
 *   load FLAGS KERNEL INITRD CMDLINE    kexec_file_load(2); FLAGS in hex
 *   unload                              kexec_file_load(KEXEC_FILE_UNLOAD)
 *   kexec-tool ARG<TAB>ARG...           run /sbin/kexec (kexec-tools, the legacy
 *                                       kexec_load(2) path) with these arguments
 *   panic TRIGGER [CPU]                 crash the kernel: sysrq (sysrq 'c', a NULL
 *                                       dereference), nmi (arm unknown_nmi_panic;
 *                                       the host injects the NMI), init-exit (make
 *                                       PID 1 exit: "Attempted to kill init!");
 *                                       CPU: pin to it first (sysrq only)
 *   cpus                                report the CPUs (online, APIC ids)
 *   cpu-online N                        wait for cpuN (hot-added) and online it
 *   memory-online N                     online offline memory blocks until N are
 *                                       online (hot-added DIMMs), or 30 s pass
 *
 * Replies (guest -> host): {"type": "hello"|"loaded"|"unloaded"|"panicking"|
 * "cpus"|"memory"|"error", ...}.  Kernel log records produced during a load are forwarded in
 * "log" so that the host can parse the segment table the kernel printed.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sched.h>
#include <sys/stat.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/utsname.h>
#include <termios.h>
#include <unistd.h>

#ifndef KEXEC_FILE_UNLOAD
#define KEXEC_FILE_UNLOAD 0x1
#endif
#ifndef KEXEC_FILE_ON_CRASH
#define KEXEC_FILE_ON_CRASH 0x2
#endif
#ifndef KEXEC_FILE_DEBUG
#define KEXEC_FILE_DEBUG 0x8
#endif

#define LINE_MAX_LEN 4096
#define VMCORE_HEAD_MAX (256 * 1024)
#define LOG_MAX_RECORDS 256
#define TOOL_MAX_ARGS 64
#define TOOL_MAX_LINES 4096
#define KEXEC_TOOL "/sbin/kexec"

static FILE *out;

static void put_json_string(const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

static void reply_end(void)
{
	fputs("}\n", out);
	fflush(out);
}

static void reply_error(const char *what, int err)
{
	fputs("{\"type\":\"error\",\"what\":", out);
	put_json_string(what);
	fprintf(out, ",\"errno\":%d,\"strerror\":", err);
	put_json_string(strerror(err));
	reply_end();
}

/* The "Crash kernel" line of /proc/iomem: the reserved region, or 0-0. */
static void crashkernel_region(unsigned long *start, unsigned long *end)
{
	char line[256];
	FILE *f = fopen("/proc/iomem", "r");

	*start = *end = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "Crash kernel"))
			sscanf(line, " %lx-%lx", start, end);
	fclose(f);
}

static void put_file_field(const char *name, const char *path)
{
	char buf[LINE_MAX_LEN] = "";
	FILE *f = fopen(path, "r");

	if (f) {
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = 0;
		buf[strcspn(buf, "\n")] = 0;
		fclose(f);
	}
	fprintf(out, ",\"%s\":", name);
	put_json_string(buf);
}

/*
 * The capture kernel's view of the dump: /proc/vmcore's size and its head
 * (ELF header, program headers and the notes), hex encoded, for the host to
 * check with a real ELF parser.  Reading the whole file would take minutes.
 */
static void put_vmcore_facts(void)
{
	struct stat st;
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	unsigned long end;
	unsigned char *buf;
	int fd, i;

	if (stat("/proc/vmcore", &st) < 0)
		return;
	fprintf(out, ",\"vmcore_size\":%lld", (long long)st.st_size);
	fd = open("/proc/vmcore", O_RDONLY);
	if (fd < 0 || pread(fd, &eh, sizeof(eh), 0) != sizeof(eh)) {
		fprintf(out, ",\"vmcore_error\":%d", errno);
		if (fd >= 0)
			close(fd);
		return;
	}
	end = eh.e_phoff + (unsigned long)eh.e_phnum * sizeof(ph);
	for (i = 0; i < eh.e_phnum && i < 4096; i++) {
		if (pread(fd, &ph, sizeof(ph), eh.e_phoff + i * sizeof(ph)) != sizeof(ph))
			break;
		if (ph.p_type == PT_NOTE && ph.p_offset + ph.p_filesz > end)
			end = ph.p_offset + ph.p_filesz;
	}
	if (end > VMCORE_HEAD_MAX)
		end = VMCORE_HEAD_MAX;
	buf = malloc(end);
	if (buf && pread(fd, buf, end, 0) == (ssize_t)end) {
		fputs(",\"vmcore_head\":\"", out);
		for (unsigned long j = 0; j < end; j++)
			fprintf(out, "%02x", buf[j]);
		fputc('"', out);
	}
	free(buf);
	close(fd);
}

/* A kdump kernel is told where the ELF headers are; /proc/vmcore may still fail. */
static int is_capture_kernel(void)
{
	char buf[LINE_MAX_LEN] = "";
	FILE *f = fopen("/proc/cmdline", "r");

	if (f) {
		buf[fread(buf, 1, sizeof(buf) - 1, f)] = 0;
		fclose(f);
	}
	return access("/proc/vmcore", F_OK) == 0 || strstr(buf, "elfcorehdr=") != NULL;
}

/*
 * The CPUs as this kernel sees them: the online/possible masks and, from
 * /proc/cpuinfo, each online processor's APIC id, which names the vCPU (the
 * capture kernel calls whatever CPU it boots on CPU 0).
 */
static void put_cpu_facts(void)
{
	char line[256];
	int processor = -1, apicid, n = 0;
	FILE *f = fopen("/proc/cpuinfo", "r");

	put_file_field("cpus_online", "/sys/devices/system/cpu/online");
	put_file_field("cpus_possible", "/sys/devices/system/cpu/possible");
	put_file_field("cpus_present", "/sys/devices/system/cpu/present");
	put_file_field("crash_hotplug", "/sys/devices/system/cpu/crash_hotplug");
	fputs(",\"cpus\":[", out);
	while (f && fgets(line, sizeof(line), f) && n < 4096) {
		if (sscanf(line, "processor : %d", &processor) == 1)
			continue;
		if (processor >= 0 && sscanf(line, "apicid : %d", &apicid) == 1) {
			fprintf(out, "%s[%d,%d]", n++ ? "," : "", processor, apicid);
			processor = -1;
		}
	}
	fputc(']', out);
	if (f)
		fclose(f);
}

static void cmd_cpus(int err)
{
	fprintf(out, "{\"type\":\"cpus\",\"errno\":%d", err);
	put_cpu_facts();
	reply_end();
}

/* A hot-added CPU shows up in sysfs once ACPI has processed QEMU's event. */
static void cmd_cpu_online(const char *arg)
{
	char path[128];
	int fd, err = 0, tries;

	snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/online", atoi(arg ? arg : "-1"));
	for (tries = 0; (fd = open(path, O_WRONLY)) < 0 && errno == ENOENT && tries < 300; tries++)
		usleep(100000);
	if (fd < 0)
		err = errno;
	else if (write(fd, "1", 1) < 0)
		err = errno;
	if (fd >= 0)
		close(fd);
	cmd_cpus(err);
}

/*
 * Online every offline memory block (a kernel without auto-online leaves a hot-added
 * DIMM offline); return how many blocks are online.
 */
static int online_memory_blocks(void)
{
	char path[300], state[32];
	struct dirent *e;
	DIR *d = opendir("/sys/devices/system/memory");
	int online = 0, fd;
	ssize_t n;

	while (d && (e = readdir(d))) {
		if (strncmp(e->d_name, "memory", 6) || !e->d_name[6])
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/%s/state", e->d_name);
		fd = open(path, O_RDWR);
		if (fd < 0)
			continue;
		n = read(fd, state, sizeof(state) - 1);
		state[n > 0 ? n : 0] = 0;
		if (!strncmp(state, "offline", 7) && pwrite(fd, "online", 6, 0) == 6)
			strcpy(state, "online");
		online += !strncmp(state, "online", 6);
		close(fd);
	}
	if (d)
		closedir(d);
	return online;
}

static void cmd_memory_online(const char *arg)
{
	int want = atoi(arg ? arg : "0"), online, tries = 0;

	while ((online = online_memory_blocks()) < want && tries++ < 300)
		usleep(100000);
	fprintf(out, "{\"type\":\"memory\",\"online_blocks\":%d,\"wanted\":%d", online, want);
	put_file_field("block_size_bytes", "/sys/devices/system/memory/block_size_bytes");
	reply_end();
}

static void cmd_hello(void)
{
	struct utsname u;
	unsigned long ck_start, ck_end;
	int capture = is_capture_kernel();

	uname(&u);
	crashkernel_region(&ck_start, &ck_end);
	fputs("{\"type\":\"hello\",\"role\":", out);
	put_json_string(capture ? "capture" : "primary");
	fputs(",\"release\":", out);
	put_json_string(u.release);
	fprintf(out, ",\"crashkernel\":[%lu,%lu]", ck_start, ck_end);
	put_file_field("cmdline", "/proc/cmdline");
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	put_cpu_facts();
	if (capture)
		put_vmcore_facts();
	reply_end();
}

/* Forward the kernel log records written since kmsg_fd was positioned. */
static void put_kmsg_records(int kmsg_fd)
{
	char rec[LINE_MAX_LEN];
	int n = 0;

	fputs(",\"log\":[", out);
	while (kmsg_fd >= 0 && n < LOG_MAX_RECORDS) {
		ssize_t len = read(kmsg_fd, rec, sizeof(rec) - 1);
		char *msg;

		if (len < 0 && errno == EPIPE)
			continue;	/* records overwritten; keep reading */
		if (len <= 0)
			break;
		rec[len] = 0;
		msg = strchr(rec, ';');
		msg = msg ? msg + 1 : rec;
		msg[strcspn(msg, "\n")] = 0;
		if (n++)
			fputc(',', out);
		put_json_string(msg);
	}
	fputc(']', out);
}

static int open_kmsg_at_end(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);

	if (fd >= 0)
		lseek(fd, 0, SEEK_END);
	return fd;
}

/* Ask dynamic debug for the pr_debug lines that describe the segments. */
static void enable_kexec_debug_prints(void)
{
	static const char *const files[] = {
		"kexec_file.c", "kexec-bzimage64.c", "crash.c", "machine_kexec_64.c",
	};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		int fd = open("/proc/dynamic_debug/control", O_WRONLY);
		if (fd < 0)
			return;
		dprintf(fd, "file %s +p", files[i]);
		close(fd);
	}
}

static long kexec_file_load(int kfd, int ifd, const char *cmdline, unsigned long flags)
{
	unsigned long len = cmdline ? strlen(cmdline) + 1 : 0;

	return syscall(SYS_kexec_file_load, kfd, ifd, len, cmdline, flags);
}

static void cmd_load(char *args)
{
	char *flags_s = strsep(&args, " ");
	char *kernel = strsep(&args, " ");
	char *initrd = strsep(&args, " ");
	const char *cmdline = args ? args : "";
	unsigned long flags;
	int kfd, ifd = -1, kmsg, err = 0, debug = 0;
	long rc;

	if (!flags_s || !kernel || !initrd) {
		reply_error("load: usage: load FLAGS KERNEL INITRD CMDLINE", EINVAL);
		return;
	}
	flags = strtoul(flags_s, NULL, 16);
	kfd = open(kernel, O_RDONLY);
	if (kfd < 0) {
		reply_error(kernel, errno);
		return;
	}
	if (strcmp(initrd, "-") && (ifd = open(initrd, O_RDONLY)) < 0) {
		reply_error(initrd, errno);
		close(kfd);
		return;
	}
	kmsg = open_kmsg_at_end();
	rc = kexec_file_load(kfd, ifd, cmdline, flags);
	if (rc < 0 && errno == EINVAL && (flags & KEXEC_FILE_DEBUG)) {
		/* Kernels before 6.7 have no KEXEC_FILE_DEBUG: use dynamic debug. */
		enable_kexec_debug_prints();
		flags &= ~KEXEC_FILE_DEBUG;
		debug = 1;
		rc = kexec_file_load(kfd, ifd, cmdline, flags);
	}
	if (rc < 0)
		err = errno;
	fprintf(out, "{\"type\":\"loaded\",\"rc\":%ld,\"errno\":%d,\"strerror\":", rc, err);
	put_json_string(err ? strerror(err) : "");
	fprintf(out, ",\"flags\":%lu,\"dynamic_debug\":%s", flags, debug ? "true" : "false");
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	put_kmsg_records(kmsg);
	reply_end();
	if (kmsg >= 0)
		close(kmsg);
	close(kfd);
	if (ifd >= 0)
		close(ifd);
}

static void cmd_unload(void)
{
	long rc = kexec_file_load(-1, -1, NULL, KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH);

	fprintf(out, "{\"type\":\"unloaded\",\"rc\":%ld,\"errno\":%d", rc, rc < 0 ? errno : 0);
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	reply_end();
}

/* Read a child's output and forward it as a bounded array of lines. */
static void put_output_lines(int fd)
{
	FILE *f = fdopen(fd, "r");
	char line[LINE_MAX_LEN];
	int n = 0;

	fputs(",\"output\":[", out);
	while (f && fgets(line, sizeof(line), f)) {
		if (n >= TOOL_MAX_LINES)
			continue;	/* drain, so the child never blocks */
		line[strcspn(line, "\n")] = 0;
		if (n++)
			fputc(',', out);
		put_json_string(line);
	}
	fputc(']', out);
	if (f)
		fclose(f);
}

static void cmd_kexec_tool(char *args)
{
	char *argv[TOOL_MAX_ARGS + 2] = { KEXEC_TOOL };
	int argc = 1, pipefd[2], status = 0, kmsg;
	pid_t pid;

	while (args && argc <= TOOL_MAX_ARGS)
		argv[argc++] = strsep(&args, "\t");
	if (pipe(pipefd) < 0) {
		reply_error("pipe", errno);
		return;
	}
	kmsg = open_kmsg_at_end();
	pid = fork();
	if (pid == 0) {
		dup2(pipefd[1], 1);
		dup2(pipefd[1], 2);
		close(pipefd[0]);
		close(pipefd[1]);
		execv(KEXEC_TOOL, argv);
		perror(KEXEC_TOOL);
		_exit(127);
	}
	close(pipefd[1]);
	fputs("{\"type\":\"kexec-tool\"", out);
	put_output_lines(pipefd[0]);
	if (pid > 0)
		waitpid(pid, &status, 0);
	fprintf(out, ",\"rc\":%d", pid < 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	put_file_field("kexec_crash_loaded", "/sys/kernel/kexec_crash_loaded");
	put_kmsg_records(kmsg);
	reply_end();
	if (kmsg >= 0)
		close(kmsg);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);

	if (fd >= 0) {
		if (write(fd, text, strlen(text)) < 0)
			reply_error(path, errno);
		close(fd);
	} else {
		reply_error(path, errno);
	}
}

static void cmd_panic(char *args)
{
	const char *trigger = strsep(&args, " ");
	cpu_set_t set;

	if (args && *args) {	/* sysrq-trigger's handler runs on the writer's CPU */
		CPU_ZERO(&set);
		CPU_SET(atoi(args), &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0) {
			reply_error("sched_setaffinity", errno);
			return;
		}
	}
	if (!strcmp(trigger, "nmi"))
		write_file("/proc/sys/kernel/unknown_nmi_panic", "1");
	fputs("{\"type\":\"panicking\",\"trigger\":", out);
	put_json_string(trigger);
	fprintf(out, ",\"cpu\":%d", sched_getcpu());
	reply_end();
	sync();
	if (!strcmp(trigger, "sysrq")) {
		write_file("/proc/sys/kernel/sysrq", "1");
		write_file("/proc/sysrq-trigger", "c");
	} else if (!strcmp(trigger, "nmi")) {
		/* Armed before the reply above went out; the host injects the NMI. */
	} else if (!strcmp(trigger, "init-exit")) {
		/* guests/init exits on SIGUSR1; the kernel panics when PID 1 dies. */
		if (kill(1, SIGUSR1) < 0)
			reply_error("kill init", errno);
	} else {
		reply_error("panic: unknown trigger", EINVAL);
	}
}

static void dispatch(char *line)
{
	char *verb = strsep(&line, " ");

	if (!strcmp(verb, "hello"))
		cmd_hello();
	else if (!strcmp(verb, "load"))
		cmd_load(line);
	else if (!strcmp(verb, "unload"))
		cmd_unload();
	else if (!strcmp(verb, "kexec-tool"))
		cmd_kexec_tool(line);
	else if (!strcmp(verb, "panic"))
		cmd_panic(line ? line : (char[]){"sysrq"});
	else if (!strcmp(verb, "cpus"))
		cmd_cpus(0);
	else if (!strcmp(verb, "cpu-online"))
		cmd_cpu_online(line);
	else if (!strcmp(verb, "memory-online"))
		cmd_memory_online(line);
	else
		reply_error(verb, ENOSYS);
}

static int open_port(const char *path)
{
	struct termios t;
	int fd = open(path, O_RDWR | O_NOCTTY);

	if (fd < 0)
		return -1;
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		cfsetspeed(&t, B115200);
		tcsetattr(fd, TCSANOW, &t);
	}
	return fd;
}

int main(int argc, char **argv)
{
	const char *port = argc > 1 ? argv[1] : "/dev/ttyS1";
	char line[LINE_MAX_LEN];
	FILE *in;
	int fd = open_port(port);

	if (fd < 0) {
		perror(port);
		return 1;
	}
	in = fdopen(fd, "r");
	out = fdopen(dup(fd), "w");
	if (!in || !out)
		return 1;
	cmd_hello();
	while (fgets(line, sizeof(line), in)) {
		line[strcspn(line, "\r\n")] = 0;
		if (line[0])
			dispatch(line);
	}
	return 0;
}
