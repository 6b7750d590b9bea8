/*
 * iscsi-pr: a cluster node's reservation commands through libiscsi's public API.
 *
 * Written for the iSCSI conformance suite (issue 13): libiscsi-bin has no persistent
 * reservation tool, so this program logs in with a fixed initiator port (initiator
 * name + ISID, one I_T nexus across invocations), sends ONE command and logs out.
 *
 *   iscsi-pr URL [-i NAME] [-I ISID] out ACTION [-k KEY] [-s SAKEY] [-t TYPE] [-a] [-g]
 *       ACTION: register reserve release clear preempt preempt-abort register-ignore
 *       -a sets APTPL, -g sets ALL_TG_PT (SPC-4 6.16.3)
 *   iscsi-pr URL [...] in read-keys|read-reservation|report-capabilities|read-full-status
 *   iscsi-pr URL [...] tur | reserve6 | release6
 *   iscsi-pr URL [...] read LBA BLOCKS OUTFILE    (512-byte blocks, READ(16))
 *   iscsi-pr URL [...] write LBA INFILE           (512-byte blocks, WRITE(16))
 *   iscsi-pr URL [...] lun-reset | target-reset   (LOGICAL UNIT RESET, TARGET WARM RESET)
 *   iscsi-pr URL [...] serve
 *
 * serve logs in once and keeps that session (a cluster node that holds a connection,
 * as a SCSI-2 reservation needs): it reads one command per line on standard input
 * (any of the above without URL and options, e.g. "reserve6" or "out reserve -k 0x1
 * -t 5"), answers each with its output and JSON line, the exit status it would have
 * had as a field "exit", and ends at "quit" or end of input, logging out.
 *
 * URL is libiscsi's iscsi://host[:port]/iqn/lun; CHAP comes from the environment
 * (LIBISCSI_CHAP_*), read by iscsi_parse_full_url. ISID is 12 hex digits; its first
 * byte is forced to the "random" format (0x80, RFC 7143 11.12.5), the rest kept.
 *
 * Output: for PR IN, one line per registered key ("    0x...", as sg_persist prints
 * them) or "holder 0x... type N"; then one JSON line with the status, the sense and
 * the raw parameter data in hex. Exit status follows sg3_utils' categories so that a
 * caller can treat it like sg_persist: 0 GOOD, 24 RESERVATION CONFLICT, 6 UNIT
 * ATTENTION, 5 ILLEGAL REQUEST, 2 NOT READY, 11 ABORTED COMMAND, 26 BUSY,
 * 27 TASK SET FULL, 99 any other status; 1 bad arguments, 90 login failed.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define BLOCK 512

static void usage(void)
{
	fprintf(stderr,
		"usage: iscsi-pr URL [-i NAME] [-I ISID] out ACTION [-k KEY] [-s SAKEY] [-t TYPE] [-a] [-g]\n"
		"       iscsi-pr URL [-i NAME] [-I ISID] in read-keys|read-reservation|report-capabilities|read-full-status\n"
		"       iscsi-pr URL [-i NAME] [-I ISID] tur|reserve6|release6\n"
		"       iscsi-pr URL [-i NAME] [-I ISID] read LBA BLOCKS OUTFILE | write LBA INFILE\n"
		"       iscsi-pr URL [-i NAME] [-I ISID] lun-reset|target-reset|serve\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end = NULL;

	errno = 0;
	*out = strtoull(s, &end, 0);
	return errno == 0 && end != s && *end == '\0';
}

static void json_str(const char *s)
{
	putchar('"');
	for (; s && *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static uint64_t be64(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static uint32_t be32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* sg3_utils-like exit category of a finished task */
static int category(struct scsi_task *task)
{
	switch (task->status) {
	case SCSI_STATUS_GOOD:
		return 0;
	case SCSI_STATUS_RESERVATION_CONFLICT:
		return 24;
	case SCSI_STATUS_BUSY:
		return 26;
	case SCSI_STATUS_TASK_SET_FULL:
		return 27;
	case SCSI_STATUS_CHECK_CONDITION:
		switch (task->sense.key) {
		case SCSI_SENSE_UNIT_ATTENTION:
			return 6;
		case SCSI_SENSE_ILLEGAL_REQUEST:
			return 5;
		case SCSI_SENSE_NOT_READY:
			return 2;
		case 0x0b: /* ABORTED COMMAND: libiscsi 1.19 names no constant for it */
			return 11;
		default:
			return 99;
		}
	default:
		return 99;
	}
}

/* Print the PR IN parameter data the way a person reads it (SPC-4 6.15). */
static void show_prin(int sa, const unsigned char *d, int n)
{
	if (n < 8 || sa > SCSI_PERSISTENT_RESERVE_READ_RESERVATION)
		return; /* REPORT CAPABILITIES and READ FULL STATUS: the JSON line's hex only */
	uint32_t len = be32(d + 4);

	printf("  PR generation=0x%x\n", be32(d));
	if (sa == SCSI_PERSISTENT_RESERVE_READ_KEYS) {
		for (uint32_t off = 8; off + 8 <= 8 + len && (int)off + 8 <= n; off += 8)
			printf("    0x%llx\n", (unsigned long long)be64(d + off));
	} else if (sa == SCSI_PERSISTENT_RESERVE_READ_RESERVATION) {
		if (len >= 16 && n >= 24)
			printf("  holder 0x%llx type %d\n", (unsigned long long)be64(d + 8),
			       d[21] & 0x0f);
		else
			printf("  no reservation\n");
	}
}

/* One command, parsed before any login (a usage error never logs in). */
struct command {
	const char *cmd;
	int sa, in, aptpl, all_tg_pt;
	uint64_t key, sakey, type, lba, blocks;
	const char *file;
};

static const char *const out_names[] = { "register", "reserve", "release", "clear",
					  "preempt", "preempt-abort", "register-ignore" };
static const char *const in_names[] = { "read-keys", "read-reservation", "report-capabilities",
					 "read-full-status" };

/* argv[0] is the command; 0 when it parses, else 1 (the message on stderr). */
static int parse_command(int argc, char **argv, struct command *c)
{
	int i = 1;

	memset(c, 0, sizeof(*c));
	c->sa = -1;
	if (argc < 1)
		return 1;
	c->cmd = argv[0];
	if (!strcmp(c->cmd, "out") || !strcmp(c->cmd, "in")) {
		c->in = !strcmp(c->cmd, "in");
		if (i >= argc)
			return 1;
		const char *action = argv[i++];
		const char *const *names = c->in ? in_names : out_names;
		int count = c->in ? 4 : 7;

		for (int j = 0; j < count; j++)
			if (!strcmp(action, names[j]))
				c->sa = j; /* the tables follow SPC-4's service action codes */
		if (c->sa < 0) {
			fprintf(stderr, "iscsi-pr: unknown %s action %s\n", c->cmd, action);
			return 1;
		}
		for (; i < argc; i++) {
			if (c->in)
				return 1;
			if (!strcmp(argv[i], "-a")) {
				c->aptpl = 1;
			} else if (!strcmp(argv[i], "-g")) {
				c->all_tg_pt = 1;
			} else if (i + 1 < argc && (!strcmp(argv[i], "-k") || !strcmp(argv[i], "-s") ||
						    !strcmp(argv[i], "-t"))) {
				uint64_t *dst = argv[i][1] == 'k' ? &c->key :
						argv[i][1] == 's' ? &c->sakey : &c->type;

				if (!parse_u64(argv[i + 1], dst)) {
					fprintf(stderr, "iscsi-pr: bad number %s\n", argv[i + 1]);
					return 1;
				}
				i++;
			} else {
				return 1;
			}
		}
		return 0;
	}
	if (!strcmp(c->cmd, "read")) {
		if (argc != 4 || !parse_u64(argv[1], &c->lba) || !parse_u64(argv[2], &c->blocks) ||
		    c->blocks == 0 || c->blocks > 2048) {
			fprintf(stderr, "iscsi-pr: bad LBA or block count\n");
			return 1;
		}
		c->file = argv[3];
		return 0;
	}
	if (!strcmp(c->cmd, "write")) {
		if (argc != 3 || !parse_u64(argv[1], &c->lba)) {
			fprintf(stderr, "iscsi-pr: bad LBA\n");
			return 1;
		}
		c->file = argv[2];
		return 0;
	}
	static const char *const bare[] = { "tur", "reserve6", "release6", "lun-reset",
					    "target-reset", "serve" };

	for (size_t j = 0; j < sizeof(bare) / sizeof(bare[0]); j++)
		if (!strcmp(c->cmd, bare[j]))
			return argc == 1 ? 0 : 1;
	return 1;
}

struct tmf_state {
	int done, response;
};

static void tmf_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private_data)
{
	struct tmf_state *st = private_data;

	(void)iscsi;
	st->done = 1;
	/* libiscsi hands over the Task Management Response's Response field */
	st->response = status == SCSI_STATUS_GOOD && command_data ? (int)*(uint32_t *)command_data
								   : -1;
}

/* A TMF with its Response (RFC 7143 11.6.1): 0 function complete, else what the target
 * answered; -1 when no response came. */
static int task_management(struct iscsi_context *iscsi, int lun, int target_reset)
{
	struct tmf_state st = { 0, -1 };
	int rc = target_reset ? iscsi_task_mgmt_target_warm_reset_async(iscsi, tmf_cb, &st)
			      : iscsi_task_mgmt_lun_reset_async(iscsi, (uint32_t)lun, tmf_cb, &st);

	if (rc != 0)
		return -1;
	while (!st.done) {
		struct pollfd pfd = { .fd = iscsi_get_fd(iscsi), .events = iscsi_which_events(iscsi) };

		if (poll(&pfd, 1, 30000) <= 0 || iscsi_service(iscsi, pfd.revents) < 0)
			return -1;
	}
	return st.response;
}

/* Run one parsed command on a logged-in context; prints its lines; its exit status. */
static int run_command(struct iscsi_context *iscsi, int lun, const struct command *c)
{
	struct scsi_task *task = NULL;
	unsigned char *wbuf = NULL;
	FILE *f = NULL;
	int code;

	if (!strcmp(c->cmd, "lun-reset") || !strcmp(c->cmd, "target-reset")) {
		int response = task_management(iscsi, lun, c->cmd[0] == 't');

		code = response == 0 ? 0 : response < 0 ? 99 : 97;
		printf("{\"ok\": %s, \"stage\": ", code == 0 ? "true" : "false");
		json_str(c->cmd);
		printf(", \"tmf_response\": %d, \"exit\": %d}\n", response, code);
		return code;
	}
	if (!strcmp(c->cmd, "out")) {
		struct scsi_persistent_reserve_out_basic basic;

		memset(&basic, 0, sizeof(basic));
		basic.reservation_key = c->key;
		basic.service_action_reservation_key = c->sakey;
		basic.aptpl = (uint8_t)c->aptpl;
		basic.all_tg_pt = (uint8_t)c->all_tg_pt;
		task = iscsi_persistent_reserve_out_sync(iscsi, lun, c->sa,
							 SCSI_PERSISTENT_RESERVE_SCOPE_LU, (int)c->type,
							 &basic);
	} else if (c->in) {
		task = iscsi_persistent_reserve_in_sync(iscsi, lun, c->sa, 8192);
	} else if (!strcmp(c->cmd, "tur")) {
		task = iscsi_testunitready_sync(iscsi, lun);
	} else if (!strcmp(c->cmd, "reserve6")) {
		task = iscsi_reserve6_sync(iscsi, lun);
	} else if (!strcmp(c->cmd, "release6")) {
		task = iscsi_release6_sync(iscsi, lun);
	} else if (!strcmp(c->cmd, "read")) {
		task = iscsi_read16_sync(iscsi, lun, c->lba, (uint32_t)(c->blocks * BLOCK), BLOCK, 0, 0,
					 0, 0, 0);
		if (task && task->status == SCSI_STATUS_GOOD) {
			f = fopen(c->file, "wb");
			if (f == NULL || fwrite(task->datain.data, 1, task->datain.size, f) !=
						 (size_t)task->datain.size) {
				fprintf(stderr, "iscsi-pr: cannot write %s\n", c->file);
				code = 1;
				goto out;
			}
		}
	} else { /* write */
		long size;

		f = fopen(c->file, "rb");
		if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) <= 0 ||
		    size % BLOCK || size > 2048 * BLOCK) {
			fprintf(stderr, "iscsi-pr: the data is not whole 512-byte blocks\n");
			code = 1;
			goto out;
		}
		rewind(f);
		wbuf = malloc((size_t)size);
		if (wbuf == NULL || fread(wbuf, 1, (size_t)size, f) != (size_t)size) {
			fprintf(stderr, "iscsi-pr: cannot read %s\n", c->file);
			code = 1;
			goto out;
		}
		task = iscsi_write16_sync(iscsi, lun, c->lba, wbuf, (uint32_t)size, BLOCK, 0, 0, 0, 0,
					  0);
	}

	if (task == NULL) {
		printf("{\"ok\": false, \"stage\": \"command\", \"error\": ");
		json_str(iscsi_get_error(iscsi));
		printf(", \"exit\": 99}\n");
		code = 99;
		goto out;
	}
	code = category(task);
	if (c->in && task->status == SCSI_STATUS_GOOD)
		show_prin(c->sa, task->datain.data, task->datain.size);
	printf("{\"ok\": %s, \"stage\": ", code == 0 ? "true" : "false");
	json_str(c->cmd);
	printf(", \"status\": %d", task->status);
	if (task->status == SCSI_STATUS_CHECK_CONDITION)
		printf(", \"sense_key\": %d, \"asc\": %d, \"ascq\": %d", task->sense.key,
		       (task->sense.ascq >> 8) & 0xff, task->sense.ascq & 0xff);
	if (c->in && task->status == SCSI_STATUS_GOOD) {
		printf(", \"data\": \"");
		for (int j = 0; j < task->datain.size; j++)
			printf("%02x", task->datain.data[j]);
		putchar('"');
	}
	printf(", \"exit\": %d}\n", code);
out:
	if (f != NULL)
		fclose(f);
	free(wbuf);
	if (task != NULL)
		scsi_free_scsi_task(task);
	return code;
}

/* serve: one command per line on stdin, each answered and flushed, until "quit" or EOF. */
static int serve(struct iscsi_context *iscsi, int lun)
{
	char line[1024];

	printf("{\"ok\": true, \"stage\": \"serve\", \"exit\": 0}\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin) != NULL) {
		char *tok[16];
		int n = 0;

		for (char *p = strtok(line, " \t\r\n"); p && n < 16; p = strtok(NULL, " \t\r\n"))
			tok[n++] = p;
		if (n == 0)
			continue;
		if (!strcmp(tok[0], "quit"))
			break;
		struct command c;

		if (parse_command(n, tok, &c) != 0 || !strcmp(c.cmd, "serve"))
			printf("{\"ok\": false, \"stage\": \"usage\", \"exit\": 1}\n");
		else
			run_command(iscsi, lun, &c);
		fflush(stdout);
		fflush(stderr);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *name = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-conformance";
	uint64_t isid = 0;
	int have_isid = 0, i;

	if (argc < 3) {
		usage();
		return 1;
	}
	const char *url_text = argv[1];
	for (i = 2; i < argc && argv[i][0] == '-'; i += 2) {
		if (i + 1 >= argc) {
			usage();
			return 1;
		}
		if (!strcmp(argv[i], "-i")) {
			name = argv[i + 1];
		} else if (!strcmp(argv[i], "-I")) {
			char *end = NULL;

			isid = strtoull(argv[i + 1], &end, 16);
			if (*end != '\0' || strlen(argv[i + 1]) != 12) {
				fprintf(stderr, "iscsi-pr: ISID must be 12 hex digits\n");
				return 1;
			}
			have_isid = 1;
		} else {
			usage();
			return 1;
		}
	}
	struct command cmd;

	if (i >= argc || parse_command(argc - i, argv + i, &cmd) != 0) {
		usage();
		return 1;
	}

	struct iscsi_context *iscsi = iscsi_create_context(name);

	if (iscsi == NULL) {
		fprintf(stderr, "iscsi-pr: cannot create a libiscsi context\n");
		return 1;
	}
	struct iscsi_url *url = iscsi_parse_full_url(iscsi, url_text);

	if (url == NULL) {
		fprintf(stderr, "iscsi-pr: %s\n", iscsi_get_error(iscsi));
		iscsi_destroy_context(iscsi);
		return 1;
	}
	if (have_isid) /* 0x80 format: 24 bits of "random" then the 16-bit qualifier */
		iscsi_set_isid_random(iscsi, (uint32_t)(isid >> 16) & 0xffffff,
				      (uint32_t)isid & 0xffff);
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	int lun = url->lun;

	if (iscsi_full_connect_sync(iscsi, url->portal, lun) != 0) {
		printf("{\"ok\": false, \"stage\": \"login\", \"error\": ");
		json_str(iscsi_get_error(iscsi));
		printf(", \"exit\": 90}\n");
		iscsi_destroy_url(url);
		iscsi_destroy_context(iscsi);
		return 90;
	}
	iscsi_destroy_url(url);
	int code = !strcmp(cmd.cmd, "serve") ? serve(iscsi, lun) : run_command(iscsi, lun, &cmd);

	iscsi_logout_sync(iscsi);
	iscsi_destroy_context(iscsi);
	return code;
}
